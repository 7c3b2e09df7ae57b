//! The sharing config and the ignore list as account data: which types they are stored under,
//! validating a config a client PUTs, and reading an ignore list.
use std::collections::HashSet;

use presence_core::sharing::{
    EntryError, SharingConfig, SharingConfigError, SharingEntry, SharingList,
};
use ruma::{OwnedUserId, ServerName};
use serde_json::Value;

use super::{EVENT_TYPE, UNSTABLE_EVENT_TYPE};

/// The account-data types of the sharing config, in precedence order: when both are stored,
/// the stable one wins.
pub const SHARING_CONFIG_TYPES: [&str; 2] = [EVENT_TYPE, UNSTABLE_EVENT_TYPE];

/// Whether `event_type` is one of the sharing-config account-data types.
pub fn is_sharing_config_type(event_type: &str) -> bool {
    SHARING_CONFIG_TYPES.contains(&event_type)
}

/// Validates sharing-config content for a PUT or a preview (the error names the list, index
/// and entry). On top of `SharingConfig::from_json`, room IDs must be well-formed: ruma accepts
/// any string starting with `!` as a room ID (room version 12 made them opaque), which would
/// let `"!"` or `"!room:"` through. Accepted: `!opaque:server` with a non-empty opaque part
/// and a valid server name, or `!` followed by unpadded base64 (the v12 form, also MSC4325's
/// `!co1dcoffee`).
pub fn validate_sharing_config(content: &Value) -> Result<SharingConfig, SharingConfigError> {
    let config = SharingConfig::from_json(content)?;
    for (list, entries) in [
        (SharingList::AllowedUsers, &config.allowed_users),
        (SharingList::DeniedUsers, &config.denied_users),
    ] {
        for (index, entry) in entries.iter().enumerate() {
            if let SharingEntry::Room(room) = entry
                && let Some(problem) = room_id_problem(room.as_str())
            {
                let mut shown = room.as_str().to_owned();
                if shown.len() > 64 {
                    let mut end = 64;
                    while !shown.is_char_boundary(end) {
                        end -= 1;
                    }
                    shown.truncate(end);
                    shown.push('…');
                }
                return Err(SharingConfigError::InvalidEntry {
                    list,
                    index,
                    entry: shown,
                    reason: EntryError::InvalidRoomId(problem.to_owned()),
                });
            }
        }
    }
    Ok(config)
}

/// What is wrong with a room ID ruma accepted, if anything.
fn room_id_problem(id: &str) -> Option<&'static str> {
    let body = id.strip_prefix('!').unwrap_or(id);
    match body.split_once(':') {
        Some((opaque, server)) => {
            if opaque.is_empty() {
                Some("the part before the server name is empty")
            } else if opaque.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Some("it contains whitespace")
            } else if ServerName::parse(server).is_err() {
                Some("the server name is invalid")
            } else {
                None
            }
        }
        None if body.is_empty() => Some("it is empty after `!`"),
        None if !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/')) =>
        {
            Some("a room ID without a server name must be unpadded base64")
        }
        None => None,
    }
}

/// The account-data type of a user's ignore list.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The user IDs in `m.ignored_user_list` content (`{"ignored_users": {"@u:hs": {}}}`);
/// anything malformed is skipped.
pub(super) fn parse_ignored_users(content: Option<&Value>) -> HashSet<OwnedUserId> {
    content
        .and_then(|c| c.get("ignored_users"))
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| OwnedUserId::try_from(k.as_str()).ok())
                .collect()
        })
        .unwrap_or_default()
}
