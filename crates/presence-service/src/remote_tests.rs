use super::*;
use crate::{PresenceServiceConfig, SyncWaker};
use ruma::{OwnedRoomId, server_name};
use std::sync::{Arc, Mutex};
use storage::Db;

#[derive(Default)]
struct Waker(Mutex<Vec<(Vec<OwnedUserId>, u64)>>);
impl SyncWaker for Waker {
    fn wake_users(&self, users: &[&UserId], position: u64) {
        let mut users: Vec<OwnedUserId> = users.iter().map(|u| (*u).to_owned()).collect();
        users.sort();
        self.0.lock().unwrap().push((users, position));
    }
}

fn uid(s: &str) -> OwnedUserId {
    OwnedUserId::try_from(s).unwrap()
}

struct Fx {
    _dir: tempfile::TempDir,
    svc: Arc<PresenceService>,
    waker: Arc<Waker>,
}

/// Local users @l1, @l2, @l3 on home.org share !r with remote @r:remote.org.
fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), false).unwrap());
    let waker = Arc::new(Waker::default());
    let svc = PresenceService::open(db, PresenceServiceConfig::default(), waker.clone()).unwrap();
    svc.set_server_name(server_name!("home.org").to_owned());
    let room: OwnedRoomId = "!r:home.org".try_into().unwrap();
    for u in [
        "@l1:home.org",
        "@l2:home.org",
        "@l3:home.org",
        "@r:remote.org",
    ] {
        svc.membership_changed(&room, &uid(u), true);
    }
    Fx {
        _dir: dir,
        svc,
        waker,
    }
}

fn push(entries: Value) -> Value {
    json!({ "push": entries })
}

fn presence_seen(fx: &Fx, viewer: &str) -> Value {
    fx.svc.event_for_viewer(&uid(viewer), &uid("@r:remote.org"))["content"]["presence"].clone()
}

#[test]
fn legacy_update_reaches_everyone_sharing_a_room_and_shows_in_get_and_sync() {
    let fx = fixture();
    let r = fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([{"user_id": "@r:remote.org", "presence": "online", "last_active_ago": 1000, "currently_active": true, "status_msg": "hi"}])),
    );
    assert_eq!((r.accepted, r.dropped, r.delivered_to), (1, 0, 3));
    let e = fx
        .svc
        .event_for_viewer(&uid("@l1:home.org"), &uid("@r:remote.org"));
    assert_eq!(e["content"]["presence"], "online");
    assert_eq!(e["content"]["status_msg"], "hi");
    assert!(e["content"]["last_active_ago"].as_u64().unwrap() >= 1000);
    assert!(fx.svc.may_see(&uid("@l1:home.org"), &uid("@r:remote.org")));
    // Incremental and initial sync carry it.
    let pos = fx.svc.db.current_position();
    let events = fx.svc.events_since(&uid("@l2:home.org"), 0, pos).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["sender"] == "@r:remote.org" && e["content"]["presence"] == "online")
    );
    let initial = fx.svc.initial_events(&uid("@l3:home.org"));
    assert!(initial.iter().any(|e| e["sender"] == "@r:remote.org"));
    assert_eq!(fx.waker.0.lock().unwrap()[0].1, pos);
}

#[test]
fn a_server_speaks_only_for_its_own_users_and_bad_entries_are_dropped() {
    let fx = fixture();
    let r = fx.svc.receive_remote_presence(
        server_name!("evil.org"),
        &push(json!([
            {"user_id": "@r:remote.org", "presence": "online"},
            {"user_id": "@l1:home.org", "presence": "online"},
        ])),
    );
    assert_eq!((r.accepted, r.dropped), (0, 2));
    let r = fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([
            {"user_id": "not a user", "presence": "online"},
            {"user_id": "@r:remote.org", "presence": "dancing"},
            {"user_id": "@r:remote.org", "presence": "online", "status_msg": "x".repeat(MAX_STATUS_MSG_BYTES + 1)},
            {"user_id": "@r:remote.org", "presence": "support.feline.msc4042.v1.disabled"},
            {"user_id": "@r:remote.org", "presence": "online", "allowed_recipients": "not a list"},
        ])),
    );
    // The last one is accepted but, with a malformed allowed_recipients, delivered to nobody.
    assert_eq!((r.accepted, r.dropped, r.delivered_to), (1, 4, 0));
    assert_eq!(presence_seen(&fx, "@l1:home.org"), "offline");
    assert!(fx.waker.0.lock().unwrap().iter().all(|(u, _)| u.is_empty()));
    let r = fx
        .svc
        .receive_remote_presence(server_name!("remote.org"), &json!({"push": "x"}));
    assert_eq!(r.accepted, 0);
    let many: Vec<Value> = (0..MAX_PUSH_ENTRIES + 5)
        .map(|_| json!({"user_id": "@r:remote.org", "presence": "online"}))
        .collect();
    let r = fx
        .svc
        .receive_remote_presence(server_name!("remote.org"), &push(json!(many)));
    assert_eq!((r.accepted, r.dropped), (MAX_PUSH_ENTRIES, 5));
}

#[test]
fn allowed_recipients_restrict_delivery_and_a_final_offline_touches_only_its_recipients() {
    let fx = fixture();
    let r = fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([{"user_id": "@r:remote.org", "presence": "online",
            "allowed_recipients": ["@l1:home.org", "@l2*:home.org", "@x:other.org"]}])),
    );
    assert_eq!(r.delivered_to, 2);
    assert_eq!(presence_seen(&fx, "@l1:home.org"), "online");
    assert_eq!(presence_seen(&fx, "@l2:home.org"), "online");
    // @l3 shares the room but is not allowed: never sees the real state.
    assert_eq!(presence_seen(&fx, "@l3:home.org"), "offline");
    let pos = fx.svc.db.current_position();
    let events = fx.svc.events_since(&uid("@l3:home.org"), 0, pos).unwrap();
    assert!(events.iter().all(|e| e["content"]["presence"] != "online"));
    assert!(
        fx.svc
            .initial_events(&uid("@l3:home.org"))
            .iter()
            .all(|e| e["sender"] != "@r:remote.org")
    );

    // Revocation for @l2 only: @l1 still sees online.
    fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([{"user_id": "@r:remote.org", "presence": "offline", "allowed_recipients": ["@l2:home.org"]}])),
    );
    assert_eq!(presence_seen(&fx, "@l1:home.org"), "online");
    assert_eq!(presence_seen(&fx, "@l2:home.org"), "offline");
}

#[test]
fn a_viewer_who_ignores_the_remote_user_sees_nothing() {
    let fx = fixture();
    fx.svc
        .set_ignored_users(
            &uid("@l1:home.org"),
            Some(&json!({"ignored_users": {"@r:remote.org": {}}})),
            1,
        )
        .expect("ignore list applied");
    let r = fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([{"user_id": "@r:remote.org", "presence": "online"}])),
    );
    assert_eq!(r.delivered_to, 2);
    assert_eq!(presence_seen(&fx, "@l1:home.org"), "offline");
    assert!(!fx.svc.may_see(&uid("@l1:home.org"), &uid("@r:remote.org")));
    assert_eq!(presence_seen(&fx, "@l2:home.org"), "online");
}

#[test]
fn stale_remote_presence_is_shown_offline() {
    let state = RemoteState {
        presence: PresenceState::Online,
        status_msg: None,
        last_active_ts: 0,
        currently_active: true,
        received_at: 1_000,
    };
    assert_eq!(state.content(2_000)["presence"], "online");
    assert_eq!(state.content(2_000)["last_active_ago"], 2_000);
    assert_eq!(
        state.content(1_000 + REMOTE_PRESENCE_TIMEOUT_MS + 1)["presence"],
        "offline"
    );
}

#[derive(Default)]
struct Observer(Mutex<Vec<OwnedUserId>>);
impl PresenceObserver for Observer {
    fn presence_changed(&self, user: &UserId) {
        self.0.lock().unwrap().push(user.to_owned());
    }
}

#[test]
fn local_changes_reach_the_observer_and_route_to_remote_servers() {
    let fx = fixture();
    let obs = Arc::new(Observer::default());
    fx.svc.set_observer(obs.clone());
    fx.svc
        .set_status(
            &uid("@l1:home.org"),
            "D",
            presence_core::DeviceState::Online,
            None,
        )
        .unwrap();
    // Remote updates are not re-announced.
    fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([{"user_id": "@r:remote.org", "presence": "online"}])),
    );
    assert_eq!(*obs.0.lock().unwrap(), vec![uid("@l1:home.org")]);
    let routing = fx.svc.federation_routing(&uid("@l1:home.org"), |_| false);
    assert_eq!(
        routing
            .destinations
            .keys()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["remote.org"]
    );
    assert_eq!(
        fx.svc.federation_presence(&uid("@l1:home.org")).presence,
        PresenceState::Online
    );
    // With a config denying @r, an untrusted remote.org gets nothing.
    fx.svc
        .set_sharing_config(
            &uid("@l1:home.org"),
            Some(&json!({"denied_users": ["@r:remote.org"]})),
        )
        .expect("config applied");
    assert!(
        fx.svc
            .federation_routing(&uid("@l1:home.org"), |_| false)
            .destinations
            .is_empty()
    );
}

#[derive(Default)]
struct AudienceSeen(Mutex<Vec<OwnedUserId>>);
impl PresenceObserver for AudienceSeen {
    fn presence_changed(&self, _: &UserId) {}
    fn audience_changed(&self, user: &UserId) {
        self.0.lock().unwrap().push(user.to_owned());
    }
}

#[test]
fn the_owners_ignore_list_keeps_their_presence_from_an_untrusted_server_of_an_ignored_user() {
    let fx = fixture();
    let obs = Arc::new(AudienceSeen::default());
    fx.svc.set_observer(obs.clone());
    let owner = uid("@l1:home.org");
    let dests = |fx: &Fx, trusted: bool| {
        fx.svc
            .federation_routing(&owner, |_| trusted)
            .destinations
            .keys()
            .map(|s| s.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(dests(&fx, false), ["remote.org"]);
    fx.svc
        .set_ignored_users(
            &owner,
            Some(&json!({"ignored_users": {"@r:remote.org": {}}})),
            1,
        )
        .expect("ignore list applied");
    // The bridge is told, so it can send the final offline.
    assert!(obs.0.lock().unwrap().contains(&owner), "audience change");
    // @r is the only user of remote.org in the room: nobody there may see l1.
    assert!(dests(&fx, false).is_empty());
    assert!(dests(&fx, true).is_empty());
}

#[test]
fn a_remote_user_not_refreshed_times_out_and_their_viewers_are_woken() {
    let fx = fixture();
    fx.svc.receive_remote_presence(
        server_name!("remote.org"),
        &push(json!([{"user_id": "@r:remote.org", "presence": "online"}])),
    );
    let before = fx.svc.db.current_position();
    let now = crate::now_ms();
    fx.svc.expire_remote(now); // fresh: nothing happens
    assert_eq!(fx.svc.db.current_position(), before);
    fx.svc
        .expire_remote(now + REMOTE_PRESENCE_TIMEOUT_MS + SWEEP_INTERVAL_MS + 1);
    let after = fx.svc.db.current_position();
    assert!(after > before);
    let wakes = fx.waker.0.lock().unwrap().clone();
    let last = wakes.last().unwrap();
    assert_eq!(last.1, after);
    assert_eq!(last.0.len(), 3, "the three local room members");
    let events = fx
        .svc
        .events_since(&uid("@l1:home.org"), before, after)
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["content"]["presence"], "offline");
}

#[test]
fn remote_presence_survives_a_restart_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let room: OwnedRoomId = "!r:home.org".try_into().unwrap();
    let open = || {
        let db = Arc::new(Db::open(dir.path(), false).unwrap());
        let svc = PresenceService::open(
            db.clone(),
            PresenceServiceConfig::default(),
            Arc::new(Waker::default()),
        )
        .unwrap();
        svc.set_server_name(server_name!("home.org").to_owned());
        for u in [
            "@l1:home.org",
            "@l2:home.org",
            "@r:remote.org",
            "@s:remote.org",
        ] {
            svc.membership_changed(&room, &uid(u), true);
        }
        (db, svc)
    };
    {
        let (_db, svc) = open();
        let origin = server_name!("remote.org");
        svc.receive_remote_presence(
            origin,
            &push(json!([
                {"user_id": "@r:remote.org", "presence": "unavailable", "status_msg": "away",
                 "last_active_ago": 60_000},
                // Restricted to @l1: @l2 must not see it after the restart either.
                {"user_id": "@s:remote.org", "presence": "online", "last_active_ago": 0,
                 "allowed_recipients": ["@l1:home.org"]},
            ])),
        );
    }
    let (db, svc) = open();
    let r = svc.event_for_viewer(&uid("@l2:home.org"), &uid("@r:remote.org"));
    assert_eq!(r["content"]["presence"], "unavailable");
    assert_eq!(r["content"]["status_msg"], "away");
    assert!(
        r["content"]["last_active_ago"].as_u64().unwrap() >= 60_000,
        "aged from the stored time"
    );
    let s = uid("@s:remote.org");
    assert_eq!(
        svc.event_for_viewer(&uid("@l1:home.org"), &s)["content"]["presence"],
        "online"
    );
    assert_eq!(
        svc.event_for_viewer(&uid("@l2:home.org"), &s)["content"]["presence"],
        "offline"
    );
    // Past the remote timeout nothing is loaded, and the stale rows are deleted.
    let later = crate::now_ms() + REMOTE_PRESENCE_TIMEOUT_MS + 1000;
    assert!(RemoteStore::load(&db, later).unwrap().users.is_empty());
    assert!(
        RemoteStore::load(&db, crate::now_ms())
            .unwrap()
            .users
            .is_empty()
    );
}
