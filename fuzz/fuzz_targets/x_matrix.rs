//! The `Authorization: X-Matrix ...` header of inbound federation requests (ruma's parser,
//! as `api-federation/src/auth.rs` uses it): never panics; what parses is written back
//! (`Display`, what the federation client sends) and parses to the same origin and key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::api::federation::authentication::XMatrix;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(xm) = XMatrix::parse(header) {
        let again = xm.to_string();
        let back = XMatrix::parse(&again).expect("a serialised X-Matrix header parses");
        assert_eq!(back.origin, xm.origin);
        assert_eq!(back.key, xm.key);
    }
});
