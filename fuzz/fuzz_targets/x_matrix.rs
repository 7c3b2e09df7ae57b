//! The `Authorization: X-Matrix ...` header of inbound federation requests (ruma's parser,
//! as `api-federation/src/auth.rs` uses it): never panics; what parses re-serialises.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::api::federation::authentication::XMatrix;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    if let Ok(xm) = XMatrix::parse(&header) {
        // What parsed can be written back and parses to the same origin and key.
        let again: http::HeaderValue = xm.clone().into();
        let back = XMatrix::parse(&again).expect("a serialised X-Matrix header parses");
        assert_eq!(back.origin, xm.origin);
        assert_eq!(back.key, xm.key);
    }
});
