//! User IDs, room IDs, aliases, event IDs and server names as they arrive in request paths:
//! percent-decoded, then parsed as each kind; a sharing-config entry; a room version. What
//! parses keeps its text (ruma's identifiers are validated borrowed strings).
#![no_main]
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = percent_decode(data).decode_utf8() else {
        return;
    };
    let s = s.as_ref();
    if let Ok(u) = ruma::UserId::parse(s) {
        assert_eq!(u.as_str(), s);
        let _ = (u.localpart(), u.server_name(), u.validate_strict());
    }
    if let Ok(r) = ruma::RoomId::parse(s) {
        assert_eq!(r.as_str(), s);
        let _ = r.server_name();
    }
    if let Ok(a) = ruma::RoomAliasId::parse(s) {
        let _ = (a.alias(), a.server_name());
    }
    if let Ok(r) = ruma::RoomOrAliasId::parse(s) {
        let _ = r.server_name();
    }
    if let Ok(e) = ruma::EventId::parse(s) {
        let _ = e.server_name();
    }
    let _ = ruma::ServerName::parse(s);
    let _ = presence_core::sharing::SharingEntry::parse(s);
    let _ = ruma::RoomVersionId::try_from(s).map(|v| v.rules());
});
