//! `m.room.server_acl` (S2S §Server Access Control Lists): which servers a room talks to.
//!
//! Applied to every room-scoped request (the origin) and to every PDU and room EDU in a
//! transaction. The port is ignored when matching; `allow` defaults to nobody, `deny` to nobody,
//! `allow_ip_literals` to true.
use ruma::{RoomId, ServerName};
use serde_json::Value;

use crate::FederationState;

/// Whether the ACL `content` lets `server` in.
pub fn server_allowed_by_acl(content: &Value, server: &str) -> bool {
    let host = strip_port(server);
    let is_ip_literal = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
    if is_ip_literal && content.get("allow_ip_literals").and_then(Value::as_bool) == Some(false) {
        return false;
    }
    let globs = |field: &str| -> Vec<&str> {
        content
            .get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    if globs("deny").iter().any(|g| glob_match(g, host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_match(g, host))
}

fn strip_port(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        // `[v6]` or `[v6]:port`: keep the brackets.
        return match rest.find(']') {
            Some(i) => &server[..i + 2],
            None => server,
        };
    }
    match server.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => server,
    }
}

/// `*` matches any run of characters, `?` one character; case-insensitive (server names
/// are DNS names).
fn glob_match(glob: &str, s: &str) -> bool {
    let g: Vec<char> = glob.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = s.to_ascii_lowercase().chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, no recursion blow-up.
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// `Err(reason)` when the room's current ACL refuses `server` (no ACL: everyone allowed).
pub(crate) fn check(
    state: &FederationState,
    room: &RoomId,
    server: &ServerName,
) -> Result<(), String> {
    let acl = state
        .rooms
        .current_state_event(room, "m.room.server_acl", "")
        .map_err(|e| format!("cannot read the room's server ACL: {e}"))?;
    match acl {
        Some(ev) if !server_allowed_by_acl(&ev.content(), server.as_str()) => Err(format!(
            "server {server} is denied by the room's m.room.server_acl"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn acl_rules() {
        let acl = json!({"allow": ["*"], "deny": ["evil.example", "*.bad.example"], "allow_ip_literals": false});
        assert!(server_allowed_by_acl(&acl, "good.example"));
        assert!(server_allowed_by_acl(&acl, "good.example:8448"));
        assert!(!server_allowed_by_acl(&acl, "evil.example:8448"));
        assert!(!server_allowed_by_acl(&acl, "a.b.bad.example"));
        assert!(!server_allowed_by_acl(&acl, "127.0.0.1:8448"));
        assert!(!server_allowed_by_acl(&acl, "[::1]:8448"));
        assert!(server_allowed_by_acl(
            &json!({"allow": ["*"]}),
            "127.0.0.1:1"
        ));
        // No allow list: nobody.
        assert!(!server_allowed_by_acl(&json!({}), "good.example"));
        assert!(server_allowed_by_acl(
            &json!({"allow": ["good.ex?mple"]}),
            "GOOD.example"
        ));
        assert!(!server_allowed_by_acl(
            &json!({"allow": ["good.ex?mple"]}),
            "good.exmple"
        ));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b", "xxaxxbxx"));
    }
}
