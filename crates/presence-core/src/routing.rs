//! Federation routing of one local user's presence: which remote servers get an update, and
//! with which MSC4325 `allowed_recipients`.
//!
//! Pure: the caller passes the owner's compiled [`SharingPolicy`], the [`AudienceIndex`]
//! (who is joined where, remote users included) and which peers are known to honour
//! `allowed_recipients` (see `docs/federation.md`, "Presence routing").
//!
//! The privacy rule for peers that are *not* known to honour the field: a receiver that
//! ignores `allowed_recipients` shows the update to every one of its users who shares a room
//! with the owner. So a restricted update goes to such a server only when every such user may
//! see the owner; otherwise the server gets nothing (its users see the owner as offline once
//! their server times the owner out — never something they may not see).

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};

use crate::audience::AudienceIndex;
use crate::sharing::{AllowedRecipients, MAX_RECIPIENTS_PER_EDU, SharingPolicy};

/// What one destination gets for one presence update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// One `push` entry without `allowed_recipients` (no sharing config: legacy fan-out).
    Unrestricted,
    /// One `push` entry per chunk, each chunk (1..=256 entries) as its `allowed_recipients`.
    Restricted(Vec<Vec<String>>),
}

/// The routing of one owner's presence to every remote server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceRouting {
    /// The destinations that get the update. A server not listed gets nothing.
    pub destinations: BTreeMap<OwnedServerName, RouteKind>,
    /// For each listed destination, the users there who will see the update (those the
    /// receiver delivers it to). Used to compute revocations and new viewers.
    pub viewers: BTreeMap<OwnedServerName, BTreeSet<OwnedUserId>>,
}

/// What a change of the routing (membership, sharing config, peer trust) requires sending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingChange {
    /// Servers that get one final `offline` for the owner, with how to address it: users there
    /// lost sight of the owner.
    pub final_offline: BTreeMap<OwnedServerName, RouteKind>,
    /// Servers with users who newly see the owner: they get the owner's current presence,
    /// routed as in the new [`PresenceRouting`].
    pub send_current: BTreeSet<OwnedServerName>,
}

/// Computes the routing of `owner`'s presence. `local` is our server name (never a
/// destination); `honours(server)` says whether `server` is known to apply
/// `allowed_recipients`. The owner ignores nobody; see [`route_presence_ignoring`].
pub fn route_presence(
    owner: &UserId,
    local: &ServerName,
    policy: &SharingPolicy,
    index: &AudienceIndex,
    honours: impl Fn(&ServerName) -> bool,
) -> PresenceRouting {
    route_presence_ignoring(owner, local, policy, index, |_| false, honours)
}

/// [`route_presence`] when the owner ignores some users (`ignored(user)`, the owner's
/// `m.ignored_user_list`): an ignored user never sees the owner, here as on our own server
/// (MSC4325 "unless the user is ignored"). So a server with an ignored user among the owner's
/// room-mates is restricted even under the legacy policy: a peer honouring
/// `allowed_recipients` gets the exact IDs of the users there who may see the owner (a glob or
/// room entry could match the ignored user), any other peer gets nothing.
pub fn route_presence_ignoring(
    owner: &UserId,
    local: &ServerName,
    policy: &SharingPolicy,
    index: &AudienceIndex,
    ignored: impl Fn(&UserId) -> bool,
    honours: impl Fn(&ServerName) -> bool,
) -> PresenceRouting {
    let mut servers: BTreeSet<OwnedServerName> = index
        .audience_servers(owner)
        .into_iter()
        .map(ToOwned::to_owned)
        .collect();
    servers.extend(
        policy
            .explicitly_allowed_users()
            .map(|u| u.server_name().to_owned()),
    );
    servers.remove(local);

    let mut routing = PresenceRouting::default();
    for server in servers {
        // Users there who share a joined room with the owner: a legacy receiver's audience.
        let sharers: BTreeSet<OwnedUserId> = index
            .members_on_server(owner, &server)
            .map(|(_, member)| member.to_owned())
            .filter(|m| m != owner)
            .collect();
        // Users there named exactly by the owner's config.
        let explicit: BTreeSet<OwnedUserId> = policy
            .explicitly_allowed_users()
            .filter(|u| u.server_name() == server)
            .map(ToOwned::to_owned)
            .collect();
        let ignores_someone_here = sharers.iter().chain(&explicit).any(|u| ignored(u));
        if policy.is_legacy() && !ignores_someone_here {
            if !sharers.is_empty() {
                routing
                    .destinations
                    .insert(server.clone(), RouteKind::Unrestricted);
                routing.viewers.insert(server, sharers);
            }
            continue;
        }
        let trusted = honours(&server);
        // Users there who may see the owner: room sharers and users named exactly.
        let seeing: BTreeSet<OwnedUserId> = sharers
            .iter()
            .chain(&explicit)
            .filter(|u| !ignored(u))
            .filter(|u| policy.is_legacy() || policy.may_see(owner, u, index))
            .cloned()
            .collect();
        let chunks = if ignores_someone_here {
            // Exact IDs: a glob or room entry of the config could name an ignored user.
            let ids: Vec<String> = seeing.iter().map(|u| u.as_str().to_owned()).collect();
            ids.chunks(MAX_RECIPIENTS_PER_EDU)
                .map(<[String]>::to_vec)
                .collect()
        } else {
            match policy.allowed_recipients(owner, &server, index.members_on_server(owner, &server))
            {
                AllowedRecipients::Chunks(chunks) => chunks,
                AllowedRecipients::Nobody | AllowedRecipients::Legacy => continue,
            }
        };
        // Nobody there may see the owner: sending would only cost bytes.
        if seeing.is_empty() {
            continue;
        }
        let viewers = if trusted {
            seeing
        } else {
            // A receiver that ignores allowed_recipients shows the update to every sharer.
            if !sharers.is_subset(&seeing) {
                continue;
            }
            sharers
        };
        debug_assert!(chunks.iter().all(|c| c.len() <= MAX_RECIPIENTS_PER_EDU));
        routing
            .destinations
            .insert(server.clone(), RouteKind::Restricted(chunks));
        routing.viewers.insert(server, viewers);
    }
    routing
}

/// What to send when the routing of the same owner changes from `before` to `after`.
///
/// A server where users lost sight gets a final `offline`: addressed to exactly those users
/// when it honours `allowed_recipients`; to the whole server (field omitted) when it does not
/// and is no longer a destination at all (then nobody there sees the owner any more, so
/// `offline` is the truthful last word). A non-honouring server that stays a destination only
/// loses users who left the shared rooms, which its own membership handling covers.
pub fn routing_change(
    before: &PresenceRouting,
    after: &PresenceRouting,
    honours: impl Fn(&ServerName) -> bool,
) -> RoutingChange {
    let empty = BTreeSet::new();
    let mut change = RoutingChange::default();
    for (server, old) in &before.viewers {
        let new = after.viewers.get(server).unwrap_or(&empty);
        let lost: Vec<String> = old.difference(new).map(|u| u.as_str().to_owned()).collect();
        if lost.is_empty() {
            continue;
        }
        if honours(server) {
            change.final_offline.insert(
                server.clone(),
                RouteKind::Restricted(
                    lost.chunks(MAX_RECIPIENTS_PER_EDU)
                        .map(<[String]>::to_vec)
                        .collect(),
                ),
            );
        } else if !after.destinations.contains_key(server) {
            change
                .final_offline
                .insert(server.clone(), RouteKind::Unrestricted);
        }
    }
    for (server, new) in &after.viewers {
        let old = before.viewers.get(server).unwrap_or(&empty);
        if new.difference(old).next().is_some() {
            change.send_current.insert(server.clone());
        }
    }
    change
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
