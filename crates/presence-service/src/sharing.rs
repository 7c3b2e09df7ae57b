//! MSC4325 presence sharing inside the service: the compiled policy of every user who has a
//! `m.presence_sharing_config`, the *push audience* derived from it, and the per-viewer
//! visibility markers that tell a viewer's next `/sync` that their view of a user changed.
//!
//! ## Two questions
//!
//! * **May V see U?** — [`PresenceService::may_see`]: exactly the rule of
//!   `SharingPolicy::may_see` (docs/presence.md), including allowed globs that match V without
//!   a shared room. `GET /presence/{U}/status` answers with it.
//! * **Does V's `/sync` carry U's presence?** — the *push audience*: V may see U **and** V shares
//!   a joined room with U or U's config names V exactly in `allowed_users`. Users reached only
//!   through a glob are not enumerable (that would mean matching every account on every
//!   update), so they are neither woken nor sent U's presence in `/sync` — initial or
//!   incremental, consistently; they still get it from `GET .../status`.
//!
//! ## Where things are
//!
//! * `config`: the account-data types, validating a config, reading an ignore list;
//! * `policy`: compiled policies and push-audience caches (`SharingState`);
//! * `audience`: the decisions above, the wake-up fan-out, federation recipients;
//! * `changes`: config, ignore-list and membership changes and who they flip;
//! * `markers`: the stored visibility markers `/sync` reads;
//! * `preview`: the audience preview.
use std::sync::RwLockReadGuard;

use presence_core::audience::AudienceIndex;
use presence_core::sharing::SharingPolicy;
use ruma::{OwnedServerName, OwnedUserId, UserId};

use crate::PresenceService;

mod audience;
mod changes;
mod config;
mod markers;
mod policy;
mod preview;
#[cfg(test)]
mod tests;

pub use config::{
    IGNORED_USER_LIST, SHARING_CONFIG_TYPES, is_sharing_config_type, validate_sharing_config,
};
pub(crate) use markers::final_offline;
pub use markers::{MARKER_PRUNE_INTERVAL, MARKER_RETENTION};
pub use policy::MAX_CACHED_VIEWERS;
pub(crate) use policy::SharingState;
pub use presence_core::sharing::{EVENT_TYPE, UNSTABLE_EVENT_TYPE};
pub use preview::{AudiencePreview, PREVIEW_DEFAULT_LIMIT, PREVIEW_MAX_LIMIT, PreviewChanges};

impl PresenceService {
    /// The server's name: users on it are local. Without it every user counts as local.
    pub fn set_server_name(&self, name: OwnedServerName) {
        let _ = self.server_name.set(name);
    }

    pub(super) fn is_local(&self, user: &UserId) -> bool {
        self.server_name
            .get()
            .is_none_or(|name| user.server_name() == name)
    }

    /// `user`'s compiled sharing policy (`None`: no config, legacy).
    pub(crate) fn sharing_policy_of(&self, user: &UserId) -> Option<SharingPolicy> {
        self.sharing().owners.get(user).map(|o| o.policy.clone())
    }

    /// Whether `viewer`'s ignore list names `user` (then `viewer` sees none of `user`'s presence).
    pub(crate) fn viewer_ignores(&self, viewer: &UserId, user: &UserId) -> bool {
        self.sharing().ignores(viewer, user)
    }

    /// The users on `owner`'s ignore list (they never see `owner`, locally or remotely).
    pub(crate) fn ignored_by(&self, owner: &UserId) -> std::collections::HashSet<OwnedUserId> {
        self.sharing()
            .ignored
            .get(owner)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn sharing(&self) -> RwLockReadGuard<'_, SharingState> {
        self.sharing.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn index(&self) -> RwLockReadGuard<'_, AudienceIndex> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner())
    }
}
