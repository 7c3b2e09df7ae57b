//! `presence_service::sharing::validate_sharing_config`, what a client's PUT of the MSC4325
//! sharing config (and its preview) runs: `SharingConfig::from_json` plus the stricter
//! room-ID check, whose error message cuts the entry at 64 bytes on a char boundary. An
//! accepted config compiles into a policy; a refused one has a printable error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use presence_core::sharing::{SharingConfig, SharingPolicy};
use presence_service::sharing::validate_sharing_config;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match validate_sharing_config(&content) {
        Ok(config) => {
            assert_eq!(
                SharingConfig::from_json(&content).ok().as_ref(),
                Some(&config),
                "the strict check only refuses, never changes"
            );
            let _ = SharingPolicy::compile(&config);
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.len() < 1024, "error messages stay short: {shown}");
        }
    }
});
