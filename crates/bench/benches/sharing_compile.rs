//! What the largest sharing config a user may store costs to compile and to decide with:
//! 2 × 1,000 globs of 255 bytes each (`MAX_ENTRIES_PER_LIST`, `MAX_ENTRY_BYTES`), every one
//! an inner-wildcard pattern. A measurement, not a check; run it (release profile):
//!
//! ```sh
//! cargo bench -p bench --bench sharing_compile
//! ```
//!
//! The correctness of what this decides (recipients fall back to plain user IDs, the member
//! may see the owner) is the presence-core unit test `maximal_config_falls_back_to_ids`.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use presence_core::sharing::{
    MAX_ENTRIES_PER_LIST, MAX_ENTRY_BYTES, RoomFacts, SharingConfig, SharingPolicy,
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, room_id, server_name, user_id};
use serde_json::json;

mod common;
use common::measure;

/// Joined rooms per user.
#[derive(Default)]
struct Rooms(BTreeMap<OwnedUserId, BTreeSet<OwnedRoomId>>);

impl RoomFacts for Rooms {
    fn joined_rooms<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a RoomId> + 'a {
        self.0.get(user).into_iter().flatten().map(|r| &**r)
    }
    fn is_joined(&self, user: &UserId, room: &RoomId) -> bool {
        self.0.get(user).is_some_and(|rooms| rooms.contains(room))
    }
}

fn glob(i: usize, tail: &str) -> String {
    let mut g = format!("@{i:04}*{tail}");
    while g.len() < MAX_ENTRY_BYTES - 1 {
        g.push(if g.len() % 7 == 0 { '?' } else { 'x' });
    }
    g.push('*');
    g
}

fn main() {
    let allowed: Vec<String> = (0..MAX_ENTRIES_PER_LIST).map(|i| glob(i, "a")).collect();
    let denied: Vec<String> = (0..MAX_ENTRIES_PER_LIST).map(|i| glob(i, "b")).collect();
    let content = json!({ "allowed_users": allowed, "denied_users": denied });
    let config = match SharingConfig::from_json(&content) {
        Ok(c) => c,
        Err(e) => panic!("the maximal config must be valid: {e}"),
    };

    let owner = user_id!("@u:example.org");
    let member = user_id!("@m:remote.org");
    let room = room_id!("!r:home.org");
    let mut rooms = Rooms::default();
    for u in [owner, member] {
        rooms
            .0
            .entry(u.to_owned())
            .or_default()
            .insert(room.to_owned());
    }
    let pairs = [(room, member)];

    let budget = Duration::from_millis(500);
    let (compile_cpu, compile_wall, policy) =
        measure(budget, 50, || SharingPolicy::compile(&config));
    let (recipients_cpu, recipients_wall, _) = measure(budget, 10_000, || {
        policy.allowed_recipients(owner, server_name!("remote.org"), pairs.iter().copied())
    });
    let (may_see_cpu, may_see_wall, _) =
        measure(budget, 10_000, || policy.may_see(owner, member, &rooms));
    println!(
        "maximal sharing config (2 × {MAX_ENTRIES_PER_LIST} globs of {MAX_ENTRY_BYTES} bytes):\n  \
         compile: {compile_cpu:?} CPU ({compile_wall:?} wall)\n  \
         allowed_recipients for one remote member: {recipients_cpu:?} CPU ({recipients_wall:?} wall)\n  \
         may_see for one member: {may_see_cpu:?} CPU ({may_see_wall:?} wall)"
    );
}
