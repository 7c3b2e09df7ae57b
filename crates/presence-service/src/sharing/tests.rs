use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use presence_core::sharing::{AllowedRecipients, RoomFacts, SharingConfig};
use presence_core::{DeviceState, StatusMsg};
use proptest::prelude::*;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, server_name};
use serde_json::{Value, json};
use storage::Db;

use super::*;
use crate::{PresenceServiceConfig, SyncWaker};

#[derive(Default)]
struct Waker(Mutex<Vec<(Vec<OwnedUserId>, u64)>>);

impl SyncWaker for Waker {
    fn wake_users(&self, users: &[&UserId], position: u64) {
        let mut users: Vec<OwnedUserId> = users.iter().map(|u| (*u).to_owned()).collect();
        users.sort();
        self.0.lock().expect("lock").push((users, position));
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    svc: Arc<PresenceService>,
    waker: Arc<Waker>,
}

fn uid(s: &str) -> OwnedUserId {
    OwnedUserId::try_from(s).expect("user id")
}

fn rid(s: &str) -> OwnedRoomId {
    OwnedRoomId::try_from(s).expect("room id")
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("db"));
    let waker = Arc::new(Waker::default());
    let config = PresenceServiceConfig {
        status_per_second: 0.0,
        ..Default::default()
    };
    let svc = PresenceService::open(db, config, waker.clone()).expect("open");
    svc.set_server_name(server_name!("x").to_owned());
    Fixture {
        _dir: dir,
        svc,
        waker,
    }
}

impl Fixture {
    fn pos(&self) -> u64 {
        self.svc.db.current_position()
    }

    fn join(&self, room: &OwnedRoomId, users: &[&OwnedUserId]) {
        for u in users {
            self.svc.membership_changed(room, u, true);
        }
    }

    fn leave(&self, room: &OwnedRoomId, user: &OwnedUserId) {
        self.svc.membership_changed(room, user, false);
    }

    fn status(&self, user: &UserId, state: DeviceState, msg: Option<&str>) {
        let msg = msg.and_then(|m| StatusMsg::new(m).expect("msg"));
        self.svc
            .set_status(user, "D", state, msg)
            .expect("not limited");
    }

    fn config(&self, user: &UserId, content: Value) {
        self.svc
            .set_sharing_config(user, Some(&content))
            .expect("stored");
    }

    /// `owner`'s presence content in `viewer`'s incremental sync from `since`, if any.
    fn seen(&self, viewer: &UserId, since: u64, owner: &UserId) -> Option<Value> {
        let events = self
            .svc
            .events_since(viewer, since, self.pos())
            .expect("events");
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["sender"] == owner.as_str())
            .collect();
        assert!(mine.len() <= 1, "one event per user: {events:?}");
        mine.first().map(|e| e["content"].clone())
    }

    fn initial_has(&self, viewer: &UserId, owner: &UserId) -> bool {
        self.svc
            .initial_events(viewer)
            .iter()
            .any(|e| e["sender"] == owner.as_str())
    }

    /// Everyone woken since the `n`-th wake.
    fn woken_after(&self, n: usize) -> BTreeSet<OwnedUserId> {
        self.waker.0.lock().expect("lock")[n..]
            .iter()
            .flat_map(|(users, _)| users.iter().cloned())
            .collect()
    }

    fn wakes(&self) -> usize {
        self.waker.0.lock().expect("lock").len()
    }
}

#[test]
fn revocation_sends_one_final_offline_to_exactly_the_viewers_who_lose_it() {
    let f = fixture();
    let (a, b, c) = (uid("@a:x"), uid("@b:x"), uid("@c:x"));
    let r = rid("!r:x");
    f.join(&r, &[&a, &b, &c]);
    f.status(&a, DeviceState::Online, Some("hi"));
    let since = f.pos();
    let n = f.wakes();
    f.config(&a, json!({"denied_users": ["@b:x"]}));
    assert_eq!(f.woken_after(n), BTreeSet::from([b.clone()]));
    assert_eq!(f.seen(&b, since, &a), Some(json!({"presence": "offline"})));
    assert_eq!(f.seen(&c, since, &a), None, "c's view did not change");
    // Once delivered, nothing more; b cannot see a any more, anywhere.
    let after = f.pos();
    f.status(&a, DeviceState::Unavailable, Some("away"));
    assert_eq!(f.seen(&b, after, &a), None);
    assert!(!f.initial_has(&b, &a));
    assert!(!f.svc.may_see(&b, &a) && !f.svc.pushes_to(&b, &a));
    assert!(!f.woken_after(n + 1).contains(&b));
    assert_eq!(f.seen(&c, after, &a).expect("c sees")["status_msg"], "away");
    assert!(f.initial_has(&c, &a));
}

#[test]
fn grant_sends_the_current_presence_at_once() {
    let f = fixture();
    let (a, b) = (uid("@a:x"), uid("@b:x"));
    f.join(&rid("!r:x"), &[&a, &b]);
    f.config(&a, json!({"denied_users": ["@*:*"]}));
    f.status(&a, DeviceState::Online, Some("back"));
    let since = f.pos();
    assert_eq!(f.seen(&b, 0, &a), None);
    let n = f.wakes();
    f.config(
        &a,
        json!({"denied_users": ["@*:*"], "allowed_users": ["@b:x"]}),
    );
    assert_eq!(f.woken_after(n), BTreeSet::from([b.clone()]));
    let seen = f.seen(&b, since, &a).expect("current presence");
    assert_eq!(seen["presence"], "online");
    assert_eq!(seen["status_msg"], "back");
}

#[test]
fn exact_allow_reaches_a_user_without_a_shared_room_but_a_glob_only_answers_get() {
    let f = fixture();
    let (a, d, e) = (uid("@a:x"), uid("@d:x"), uid("@eve:x"));
    f.config(&a, json!({"allowed_users": ["@d:x", "@e*:x"]}));
    let n = f.wakes();
    f.status(&a, DeviceState::Online, None);
    assert!(f.woken_after(n).contains(&d));
    assert!(!f.woken_after(n).contains(&e));
    assert_eq!(f.seen(&d, 0, &a).expect("d sees")["presence"], "online");
    assert!(f.initial_has(&d, &a));
    // The glob matches eve: she may see a (GET), but her sync does not carry a.
    assert!(f.svc.may_see(&e, &a));
    assert!(!f.svc.pushes_to(&e, &a));
    assert_eq!(f.seen(&e, 0, &a), None);
    assert!(!f.initial_has(&e, &a));
}

#[test]
fn leaving_the_last_shared_room_sends_a_final_offline_both_ways() {
    let f = fixture();
    let (a, b, c) = (uid("@a:x"), uid("@b:x"), uid("@c:x"));
    let (r, other) = (rid("!r:x"), rid("!other:x"));
    f.join(&r, &[&a, &b]);
    f.join(&other, &[&a, &c]);
    f.status(&a, DeviceState::Online, Some("hi"));
    f.status(&b, DeviceState::Online, None);
    let since = f.pos();
    f.leave(&r, &b);
    assert_eq!(f.seen(&b, since, &a), Some(json!({"presence": "offline"})));
    assert_eq!(f.seen(&a, since, &b), Some(json!({"presence": "offline"})));
    assert_eq!(f.seen(&c, since, &a), None);
}

#[test]
fn a_leave_that_leaves_only_denied_rooms_hides_the_user() {
    // Not in AudienceDelta.lost (b and a still share !noisy), yet b loses sight of a.
    let f = fixture();
    let (a, b) = (uid("@a:x"), uid("@b:x"));
    let (chat, noisy) = (rid("!chat:x"), rid("!noisy:x"));
    f.join(&chat, &[&a, &b]);
    f.join(&noisy, &[&a, &b]);
    f.config(&a, json!({"denied_users": ["!noisy:x"]}));
    f.status(&a, DeviceState::Online, None);
    let since = f.pos();
    assert!(f.svc.pushes_to(&b, &a));
    f.leave(&chat, &b);
    assert_eq!(f.seen(&b, since, &a), Some(json!({"presence": "offline"})));
    assert!(!f.svc.may_see(&b, &a));
    // Rejoining restores it (sync shows it from the join, no marker needed).
    f.join(&chat, &[&b]);
    assert!(f.svc.pushes_to(&b, &a));
    assert!(f.svc.fanout(&a).contains(&b));
}

#[test]
fn listed_rooms_the_owner_is_not_in_neither_grant_nor_deny() {
    let f = fixture();
    let (a, b, c) = (uid("@a:x"), uid("@b:x"), uid("@c:x"));
    let (listed, denied, shared) = (rid("!listed:x"), rid("!denied:x"), rid("!shared:x"));
    f.join(&listed, &[&a, &b]);
    f.join(&denied, &[&a, &c]);
    f.join(&shared, &[&a, &c]);
    f.config(
        &a,
        json!({"allowed_users": ["!listed:x"], "denied_users": ["!denied:x"]}),
    );
    f.status(&a, DeviceState::Online, None);
    assert!(f.svc.pushes_to(&b, &a) && f.svc.pushes_to(&c, &a));
    f.leave(&listed, &a);
    f.leave(&denied, &a);
    // b is still in !listed, but a left it: it grants nothing.
    assert!(!f.svc.may_see(&b, &a));
    // c is still in !denied with... nobody; !shared decides.
    assert!(f.svc.may_see(&c, &a) && f.svc.pushes_to(&c, &a));
}

#[test]
fn unparseable_config_fails_closed() {
    let f = fixture();
    let (a, b) = (uid("@a:x"), uid("@b:x"));
    f.join(&rid("!r:x"), &[&a, &b]);
    f.status(&a, DeviceState::Online, None);
    let since = f.pos();
    f.config(&a, json!({"allowed_users": "@b:x"}));
    assert!(!f.svc.may_see(&b, &a));
    assert!(f.svc.may_see(&a, &a));
    assert_eq!(f.seen(&b, since, &a), Some(json!({"presence": "offline"})));
    let preview = f.svc.audience_preview(&a, None, 10);
    assert_eq!(preview.policy, "invalid_config");
    assert_eq!(preview.local_user_count, 0);
    // Removing the config (e.g. only the unstable type was stored and is now unparseable →
    // the caller passes None when nothing is stored) restores legacy sharing.
    f.svc.set_sharing_config(&a, None).expect("stored");
    assert!(f.svc.may_see(&b, &a));
}

#[test]
fn loading_stored_configs_writes_no_markers() {
    let f = fixture();
    let (a, b) = (uid("@a:x"), uid("@b:x"));
    f.join(&rid("!r:x"), &[&a, &b]);
    f.status(&a, DeviceState::Online, None);
    let pos = f.pos();
    f.svc
        .load_sharing_configs([(a.clone(), json!({"denied_users": ["@b:x"]}))]);
    assert_eq!(f.pos(), pos);
    assert!(!f.svc.may_see(&b, &a));
}

#[test]
fn allowed_recipients_per_destination() {
    let f = fixture();
    let (a, plain) = (uid("@a:x"), uid("@plain:x"));
    let (r1, r2, r3) = (uid("@r1:remote"), uid("@r2:remote"), uid("@r3:remote"));
    let room = rid("!r:x");
    f.join(&room, &[&a, &plain, &r1, &r2]);
    f.config(
        &a,
        json!({"denied_users": ["@r2:remote"], "allowed_users": ["@r3:remote"]}),
    );
    let remote = server_name!("remote");
    assert_eq!(
        f.svc.allowed_recipients_for(&a, remote),
        AllowedRecipients::Chunks(vec![vec!["@r1:remote".to_owned(), "@r3:remote".to_owned()]])
    );
    assert_eq!(
        f.svc.allowed_recipients_for(&plain, remote),
        AllowedRecipients::Legacy
    );
    f.config(&a, json!({"denied_users": ["@*:remote"]}));
    assert_eq!(
        f.svc.allowed_recipients_for(&a, remote),
        AllowedRecipients::Nobody
    );
    let _ = r3;
}

#[test]
fn incoming_recipients_filter_local_delivery() {
    let f = fixture();
    let sender = uid("@s:remote");
    let (b, c, d) = (uid("@b:x"), uid("@c:x"), uid("@d:x"));
    f.join(&rid("!r:remote"), &[&sender, &b, &c, &uid("@other:remote")]);
    let got = |field: Option<Value>| f.svc.incoming_recipients(&sender, field.as_ref());
    assert_eq!(got(None), vec![b.clone(), c.clone()]);
    assert_eq!(got(Some(json!(null))), vec![b.clone(), c.clone()]);
    assert_eq!(got(Some(json!([]))), vec![b.clone(), c.clone()]);
    assert_eq!(got(Some(json!(["@b:x"]))), vec![b.clone()]);
    assert_eq!(got(Some(json!(["@c*:x"]))), vec![c.clone()]);
    // Named exactly without a shared room: the sender vouched for d.
    assert_eq!(got(Some(json!(["@d:x"]))), vec![d.clone()]);
    // A field of the wrong type, or only junk: nobody.
    assert_eq!(got(Some(json!("@b:x"))), Vec::<OwnedUserId>::new());
    assert_eq!(got(Some(json!(["!room:x", 7]))), Vec::<OwnedUserId>::new());
}

#[test]
fn audience_preview_counts_and_previews_without_applying() {
    let f = fixture();
    let (a, b, c, d) = (uid("@a:x"), uid("@b:x"), uid("@c:x"), uid("@d:x"));
    let r = rid("!r:x");
    f.join(&r, &[&a, &b, &c, &uid("@r1:remote"), &uid("@r2:remote")]);
    let now = f.svc.audience_preview(&a, None, 10);
    assert_eq!(now.policy, "default");
    assert_eq!(now.local_users, vec![b.clone(), c.clone()]);
    assert_eq!(now.remote_servers.get(server_name!("remote")), Some(&2));
    f.config(
        &a,
        json!({"denied_users": ["@c:x", "@r1:remote"], "allowed_users": ["@q*:x"]}),
    );
    let now = f.svc.audience_preview(&a, None, 1);
    assert_eq!(now.policy, "config");
    assert_eq!(now.local_users, vec![b.clone()]);
    assert_eq!(now.local_user_count, 1);
    assert!(!now.limited);
    assert_eq!(now.remote_servers.get(server_name!("remote")), Some(&1));
    assert_eq!(now.allowed_globs, vec!["@q*:x".to_owned()]);
    assert!(now.changes.is_none());
    let candidate =
        SharingConfig::from_json(&json!({"denied_users": ["@b:x"], "allowed_users": ["@d:x"]}))
            .expect("valid");
    let pos = f.pos();
    let then = f.svc.audience_preview(&a, Some(&candidate), 1);
    assert_eq!(then.local_user_count, 2);
    assert_eq!(then.local_users, vec![c.clone()]);
    assert!(then.limited);
    let changes = then.changes.expect("changes");
    assert_eq!((changes.gained_count, changes.lost_count), (2, 1));
    assert_eq!(changes.gained, vec![c.clone()]);
    assert_eq!(changes.lost, vec![b.clone()]);
    // Nothing applied.
    assert_eq!(f.pos(), pos);
    assert!(f.svc.pushes_to(&b, &a) && !f.svc.pushes_to(&c, &a) && !f.svc.pushes_to(&d, &a));
}

#[test]
fn malformed_room_ids_are_rejected_that_ruma_accepts() {
    for (entry, ok) in [
        ("!r:example.org", true),
        ("!co1dcoffee", true),
        ("!3Bw0zDwLcJGkLTI1bEjHx7t0U1Ze9hFJgQX5QD1vXnM", true),
        ("!", false),
        ("!:example.org", false),
        ("!room:", false),
        ("!a b:example.org", false),
        ("!room:bad server", false),
        ("!not base64!", false),
    ] {
        let result = validate_sharing_config(&json!({"denied_users": ["@a:x", entry]}));
        assert_eq!(result.is_ok(), ok, "{entry}: {result:?}");
        if let Err(e) = result {
            let message = e.to_string();
            assert!(message.starts_with("`denied_users[1]`"), "{message}");
        }
    }
}

// ---- property: caches and markers against a from-scratch model --------------------------

const USERS: [&str; 5] = ["@u0:x", "@u1:x", "@u2:x", "@u3:x", "@r0:remote"];
const ROOMS: [&str; 3] = ["!r0:x", "!r1:x", "!r2:x"];

fn configs() -> Vec<Option<Value>> {
    vec![
        None,
        Some(json!({})),
        Some(json!({"denied_users": ["@u1:x"]})),
        Some(json!({"denied_users": ["@*:*"], "allowed_users": ["@u2:x"]})),
        Some(json!({"allowed_users": ["@u*:x"], "denied_users": ["!r0:x"]})),
        Some(json!({"denied_users": ["!r1:x", "@u3:x"], "allowed_users": ["!r1:x", "@r0:remote"]})),
        Some(json!({"allowed_users": 1})),
        Some(json!({"denied_users": ["@u?:x"], "allowed_users": ["@u0:x", "@u1*"]})),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize),
    Leave(usize, usize),
    Config(usize, usize),
    Status(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS.len(), 0..ROOMS.len()).prop_map(|(u, r)| Op::Join(u, r)),
        2 => (0..USERS.len(), 0..ROOMS.len()).prop_map(|(u, r)| Op::Leave(u, r)),
        2 => (0..4usize, 0..8usize).prop_map(|(u, c)| Op::Config(u, c)),
        1 => (0..4usize).prop_map(Op::Status),
    ]
}

#[derive(Default)]
struct Model {
    joined: BTreeMap<OwnedUserId, BTreeSet<OwnedRoomId>>,
    configs: BTreeMap<OwnedUserId, Value>,
}

impl RoomFacts for Model {
    fn joined_rooms<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a RoomId> + 'a {
        self.joined.get(user).into_iter().flatten().map(|r| &**r)
    }

    fn is_joined(&self, user: &UserId, room: &RoomId) -> bool {
        self.joined.get(user).is_some_and(|r| r.contains(room))
    }
}

impl Model {
    fn share(&self, a: &UserId, b: &UserId) -> bool {
        self.joined_rooms(a).any(|r| self.is_joined(b, r))
    }

    fn pushes(&self, owner: &UserId, viewer: &UserId) -> bool {
        if owner == viewer {
            return true;
        }
        let share = self.share(owner, viewer);
        let policy = SharingPolicy::from_account_data(self.configs.get(owner));
        let explicit = policy.explicitly_allowed_users().any(|u| u == viewer);
        (share || explicit) && policy.may_see(owner, viewer, self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// After every step the cached push audience equals a from-scratch evaluation, and the
    /// markers written by the step are exactly the local viewers whose view flipped (losses
    /// from leaves and config changes, gains from config changes) of owners who published,
    /// plus, for a join, the pairs that newly share a room and see each other.
    #[test]
    fn caches_and_markers_match_a_model(ops in prop::collection::vec(op(), 1..40)) {
        let f = fixture();
        let users: Vec<OwnedUserId> = USERS.iter().map(|u| uid(u)).collect();
        let rooms: Vec<OwnedRoomId> = ROOMS.iter().map(|r| rid(r)).collect();
        let local: Vec<&OwnedUserId> = users.iter().filter(|u| u.server_name() == "x").collect();
        let mut model = Model::default();
        let configs = configs();
        let mut published: BTreeSet<OwnedUserId> = BTreeSet::new();
        for op in ops {
            let before: BTreeMap<(usize, usize), bool> = (0..users.len())
                .flat_map(|o| (0..users.len()).map(move |v| (o, v)))
                .map(|(o, v)| ((o, v), model.pushes(&users[o], &users[v])))
                .collect();
            let shared_before: BTreeMap<(usize, usize), bool> = (0..users.len())
                .flat_map(|o| (0..users.len()).map(move |v| (o, v)))
                .map(|(o, v)| ((o, v), model.share(&users[o], &users[v])))
                .collect();
            let pos_before = f.pos();
            let mut gains_marked = false;
            let joins = matches!(op, Op::Join(..));
            match &op {
                Op::Join(u, r) => {
                    f.svc.membership_changed(&rooms[*r], &users[*u], true);
                    model.joined.entry(users[*u].clone()).or_default().insert(rooms[*r].clone());
                }
                Op::Leave(u, r) => {
                    f.svc.membership_changed(&rooms[*r], &users[*u], false);
                    model.joined.entry(users[*u].clone()).or_default().remove(&rooms[*r]);
                }
                Op::Config(u, c) => {
                    f.svc
                        .set_sharing_config(&users[*u], configs[*c].as_ref())
                        .expect("stored");
                    match &configs[*c] {
                        Some(v) => model.configs.insert(users[*u].clone(), v.clone()),
                        None => model.configs.remove(&users[*u]),
                    };
                    gains_marked = true;
                }
                Op::Status(u) => {
                    f.status(&users[*u], DeviceState::Online, Some(&format!("{pos_before}")));
                    published.insert(users[*u].clone());
                }
            }
            let pos_after = f.pos();
            let mut expected: BTreeSet<(OwnedUserId, OwnedUserId)> = BTreeSet::new();
            // Building caches only every other step leaves both the cached and the uncached
            // paths exercised.
            let check_fanout = pos_after.is_multiple_of(2);
            for (o, owner) in users.iter().enumerate() {
                let fanout: BTreeSet<OwnedUserId> = if check_fanout {
                    f.svc.fanout(owner).into_iter().collect()
                } else {
                    BTreeSet::new()
                };
                for (v, viewer) in users.iter().enumerate() {
                    let now = model.pushes(owner, viewer);
                    if viewer.server_name() == "x" {
                        prop_assert_eq!(f.svc.pushes_to(viewer, owner), now, "{} → {} after {:?}", owner, viewer, op);
                        if check_fanout {
                            prop_assert_eq!(fanout.contains(viewer), now, "fanout of {} after {:?}", owner, op);
                        }
                    }
                    let flipped_off = before[&(o, v)] && !now;
                    let flipped_on = !before[&(o, v)] && now && gains_marked;
                    let joined_to_see = joins
                        && now
                        && !shared_before[&(o, v)]
                        && model.share(owner, viewer);
                    if (flipped_off || flipped_on || joined_to_see) && published.contains(owner)
                        && viewer.server_name() == "x" && owner != viewer {
                        expected.insert((viewer.clone(), owner.clone()));
                    }
                }
            }
            let mut marked = BTreeSet::new();
            for viewer in &local {
                for owner in f.svc.marked_owners(viewer, pos_before, pos_after).expect("markers") {
                    marked.insert(((*viewer).clone(), owner));
                }
            }
            prop_assert_eq!(marked, expected, "markers after {:?}", op);
        }
    }
}

#[test]
fn an_older_ignore_list_applied_late_does_not_replace_the_newer_one() {
    // Two PUTs of m.ignored_user_list: the first (stored at position 10, ignoring b) is
    // applied after the second (stored at 11, ignoring nobody). The newer list must stay.
    let f = fixture();
    let (a, b) = (uid("@a:x"), uid("@b:x"));
    let r = rid("!r:x");
    f.join(&r, &[&a, &b]);
    f.status(&a, DeviceState::Online, None);
    f.svc
        .set_ignored_users(&a, Some(&json!({"ignored_users": {}})), 11)
        .expect("stored");
    f.svc
        .set_ignored_users(&a, Some(&json!({"ignored_users": {"@b:x": {}}})), 10)
        .expect("stored");
    assert!(f.svc.may_see(&b, &a) && f.svc.pushes_to(&b, &a));
    // In order, the later list applies.
    f.svc
        .set_ignored_users(&a, Some(&json!({"ignored_users": {"@b:x": {}}})), 12)
        .expect("stored");
    assert!(!f.svc.may_see(&b, &a) && !f.svc.pushes_to(&b, &a));
}

#[test]
fn a_sync_racing_a_join_gets_the_joined_users_presence_on_its_next_sync() {
    let f = fixture();
    let (a, b) = (uid("@a:x"), uid("@b:x"));
    let r = rid("!r:x");
    f.join(&r, &[&a]);
    f.status(&a, DeviceState::Online, Some("here"));
    let before_join = f.pos();
    // b's join commits at `join_pos`; a /sync of b runs before the audience index has it:
    // it shows the join, no presence of a (b shares no room with a yet), and moves on.
    let (join_pos, ()) = f
        .svc
        .db
        .write_with_position::<_, storage::StorageError>(|_, _| Ok(()))
        .expect("join written");
    assert!(!f.svc.pushes_to(&b, &a));
    let racing = f
        .svc
        .events_since(&b, before_join, join_pos)
        .expect("events");
    assert!(racing.iter().all(|e| e["sender"] != a.as_str()));
    // Now the index learns of the join; b's next sync (from the token it was given) must
    // carry a's presence although a did not change since.
    f.join(&r, &[&b]);
    let seen = f
        .seen(&b, join_pos, &a)
        .expect("a's presence after the join");
    assert_eq!(seen["status_msg"], "here");
}

#[test]
fn visibility_markers_are_pruned_and_stay_flat_under_churn() {
    // Issue 19 item 6: every (viewer, owner) flip left two keys behind forever.
    let f = fixture();
    let a = uid("@a:x");
    let viewers: Vec<OwnedUserId> = (0..50).map(|i| uid(&format!("@v{i}:x"))).collect();
    let mut members: Vec<&OwnedUserId> = viewers.iter().collect();
    members.push(&a);
    f.join(&rid("!r:x"), &members);
    f.status(&a, DeviceState::Online, None);
    let mut sizes = Vec::new();
    for round in 0..4 {
        // Hide a from everyone, then show again: 2 markers per viewer per round.
        f.config(&a, json!({"denied_users": ["@v*:x"]}));
        f.config(&a, json!({}));
        let stored = f.svc.stored_marker_keys().expect("count");
        assert!(stored > 0, "round {round}: the churn wrote no markers");
        // The timer would prune what is older than the retention; here: everything so far
        // but the newest position (kept, and still served).
        let newest = f.pos();
        f.svc.prune_markers_before(newest).expect("prune");
        sizes.push(f.svc.stored_marker_keys().expect("count"));
    }
    assert!(
        sizes.windows(2).all(|w| w[0] == w[1]),
        "stored marker keys per round: {sizes:?}"
    );
    // What survived is exactly the newest flip, and a sync from before it still sees it.
    let v0 = &viewers[0];
    let marked = f
        .svc
        .marked_owners(v0, f.pos() - 1, f.pos())
        .expect("markers");
    assert_eq!(marked, vec![a.clone()]);
    // Pruning past everything leaves nothing, pair index included.
    f.svc.prune_markers_before(f.pos() + 1).expect("prune");
    assert_eq!(f.svc.stored_marker_keys().expect("count"), 0);
}
