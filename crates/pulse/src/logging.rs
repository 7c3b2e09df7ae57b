//! The log subscriber: the operator's filter, with ruma's state resolution held at `warn`
//! unless the filter names it (it logs every authorization check at `info` and `debug`,
//! which at the default `level = "info"` buries what an operator needs).
//!
//! What never reaches the log at any level: passwords, access tokens and the registration
//! shared secret (request bodies and the `Authorization` header are not logged; a test in
//! `tests/log_secrets.rs` greps a debug-level log for them).

/// The `tracing` target of ruma's state resolution and authorization rules.
const STATE_RES_TARGET: &str = "ruma_state_res";

/// `filter`, plus `ruma_state_res=warn` unless it sets that target itself.
pub fn effective_filter(filter: &str) -> String {
    let names_state_res = filter
        .split(',')
        .any(|d| d.trim().starts_with(STATE_RES_TARGET));
    if names_state_res {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        format!("info,{STATE_RES_TARGET}=warn")
    } else {
        format!("{filter},{STATE_RES_TARGET}=warn")
    }
}

pub fn init(filter: &str) {
    let wanted = effective_filter(filter);
    let filter = tracing_subscriber::EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("pulse: bad log filter {filter:?} ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new(effective_filter("info"))
    });
    // Colour codes only on a terminal: `docker logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_res_is_held_at_warn_unless_named() {
        assert_eq!(effective_filter("info"), "info,ruma_state_res=warn");
        assert_eq!(
            effective_filter("pulse=debug,info"),
            "pulse=debug,info,ruma_state_res=warn"
        );
        assert_eq!(effective_filter(""), "info,ruma_state_res=warn");
        assert_eq!(
            effective_filter("debug,ruma_state_res=debug"),
            "debug,ruma_state_res=debug"
        );
    }

    #[test]
    fn the_filter_parses_and_keeps_the_operators_level() {
        use tracing::level_filters::LevelFilter;
        let f = tracing_subscriber::EnvFilter::try_new(effective_filter("info")).expect("parses");
        assert_eq!(f.max_level_hint(), Some(LevelFilter::INFO));
        assert!(f.to_string().contains("ruma_state_res=warn"));
    }
}
