//! Events of ignored users (`m.ignored_user_list`): the spec asks that a user not see the
//! events of the users they ignore. As Synapse does, only non-state events are hidden —
//! state events (an ignored member's joins, a name change) still make up the room's state
//! and are still shown — and everywhere a client reads a timeline: the `/sync` timeline,
//! `/messages`, `/context`, `/event`, `/relations`, `/threads` and `/search`
//! (notifications and their counts already leave them out, in `push`). Nothing is
//! deleted: the list is read on every request, so un-ignoring a user shows their events
//! again in `/messages`, `/context` and an initial `/sync` at once. An incremental `/sync`
//! does not resend the events it left out: the changed list arrives in its `account_data`,
//! and the spec asks clients to sync from scratch then (Element does).
use std::collections::HashSet;

use rooms::StoredEvent;
use ruma::UserId;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiResult, MatrixError};

/// The users one user ignores.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ignored(HashSet<String>);

impl Ignored {
    /// `user`'s current list (empty when none is stored or it is malformed).
    pub(crate) fn of(state: &AppState, user: &UserId) -> ApiResult<Ignored> {
        Self::load(&state.accounts, user)
    }

    pub(crate) fn load(accounts: &accounts::AccountService, user: &UserId) -> ApiResult<Ignored> {
        let content = accounts
            .account_data(user, None, "m.ignored_user_list")
            .map_err(MatrixError::internal)?;
        Ok(Ignored(
            content
                .as_ref()
                .and_then(|c| c.get("ignored_users"))
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
        ))
    }

    /// Whether `sender` is on the list.
    pub(crate) fn contains(&self, sender: &str) -> bool {
        self.0.contains(sender)
    }

    /// Whether `ev` is hidden from the list's owner: a non-state event by an ignored user.
    pub(crate) fn hides(&self, ev: &StoredEvent) -> bool {
        !ev.is_state() && self.0.contains(ev.sender())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_only_listed_users() {
        let ig = Ignored(["@b:x".to_owned()].into_iter().collect());
        assert!(ig.contains("@b:x"));
        assert!(!ig.contains("@c:x"));
        assert!(!Ignored::default().contains("@b:x"));
    }
}
