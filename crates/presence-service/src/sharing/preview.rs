//! The audience preview: who can see a user's presence now, or would under a candidate config.
use std::collections::{BTreeMap, HashSet};

use presence_core::sharing::SharingConfig;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::Serialize;

use super::policy::OwnerSharing;
use crate::PresenceService;

/// Default and maximum number of local users the audience preview lists.
pub const PREVIEW_DEFAULT_LIMIT: usize = 100;
/// See [`PREVIEW_DEFAULT_LIMIT`].
pub const PREVIEW_MAX_LIMIT: usize = 1000;

/// Who can currently see a user's presence (the audience preview).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudiencePreview {
    /// `"default"` (no config: everyone sharing a room), `"config"`, or `"invalid_config"`
    /// (a stored config that does not parse: nobody).
    pub policy: &'static str,
    /// Local users whose `/sync` carries the presence, sorted, at most `limit`.
    pub local_users: Vec<OwnedUserId>,
    /// How many local users that is in total.
    pub local_user_count: usize,
    /// Whether `local_users` was cut at the limit.
    pub limited: bool,
    /// Remote servers and how many of their users (known from shared rooms or named exactly)
    /// may see the presence. (Nothing is sent over federation yet.)
    pub remote_servers: BTreeMap<OwnedServerName, usize>,
    /// Allowed globs: users they match (and no more specific deny excludes) may also fetch the
    /// presence with `GET /presence/{userId}/status` without sharing a room; they are not
    /// counted above and their `/sync` does not carry it.
    pub allowed_globs: Vec<String>,
    /// Only for a preview of a candidate config: local users who would start / stop seeing
    /// the presence if it were applied (at most `limit` each) and how many in total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<PreviewChanges>,
}

/// What applying a candidate config would change for local users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewChanges {
    pub gained: Vec<OwnedUserId>,
    pub gained_count: usize,
    pub lost: Vec<OwnedUserId>,
    pub lost_count: usize,
}

impl PresenceService {
    /// Who can currently see `user`'s presence — or, with `candidate` (validated config
    /// content), who could if it were applied (nothing is stored or changed).
    pub fn audience_preview(
        &self,
        user: &UserId,
        candidate: Option<&SharingConfig>,
        limit: usize,
    ) -> AudiencePreview {
        let limit = limit.min(PREVIEW_MAX_LIMIT);
        let candidate = candidate.map(OwnerSharing::compile);
        let sharing = self.sharing();
        let rooms = self.index();
        let current = sharing.owners.get(user);
        let evaluated = candidate.as_ref().or(current);
        let mut everyone: HashSet<&UserId> = rooms.audience(user).collect();
        if let Some(o) = evaluated {
            everyone.extend(o.explicit.iter().map(|u| &**u));
        }
        let mut local = Vec::new();
        let mut remote_servers: BTreeMap<OwnedServerName, usize> = BTreeMap::new();
        for v in &everyone {
            if *v == user {
                continue;
            }
            if self.is_local(v) {
                let sees = match evaluated {
                    None => true,
                    Some(o) => o.pushes_to(user, v, &*rooms),
                };
                if sees {
                    local.push((*v).to_owned());
                }
            } else {
                let sees = match evaluated {
                    None => true,
                    Some(o) => o.policy.may_see(user, v, &*rooms),
                };
                if sees {
                    *remote_servers
                        .entry(v.server_name().to_owned())
                        .or_default() += 1;
                }
            }
        }
        local.sort();
        let changes = candidate.as_ref().map(|_| {
            let now: HashSet<&UserId> = everyone
                .iter()
                .copied()
                .chain(current.iter().flat_map(|o| o.explicit.iter().map(|u| &**u)))
                .filter(|v| *v != user && self.is_local(v))
                .filter(|v| match current {
                    None => rooms.shares_room(user, v),
                    Some(o) => o.pushes_to(user, v, &*rooms),
                })
                .collect();
            let then: HashSet<&UserId> = local.iter().map(|u| &**u).collect();
            let mut gained: Vec<OwnedUserId> =
                then.difference(&now).map(|u| (*u).to_owned()).collect();
            let mut lost: Vec<OwnedUserId> =
                now.difference(&then).map(|u| (*u).to_owned()).collect();
            gained.sort();
            lost.sort();
            let (gained_count, lost_count) = (gained.len(), lost.len());
            gained.truncate(limit);
            lost.truncate(limit);
            PreviewChanges {
                gained,
                gained_count,
                lost,
                lost_count,
            }
        });
        let local_user_count = local.len();
        local.truncate(limit);
        AudiencePreview {
            policy: match evaluated {
                None => "default",
                Some(o) if o.invalid => "invalid_config",
                Some(_) => "config",
            },
            limited: local_user_count > local.len(),
            local_users: local,
            local_user_count,
            remote_servers,
            allowed_globs: evaluated
                .map(|o| o.allowed_globs.clone())
                .unwrap_or_default(),
            changes,
        }
    }
}
