//! Events from another server: built and signed here with a key of a fake
//! `remote.example`, received through [`RoomService::receive_pdu`] and friends.
//! Every scenario is a function of the room version, run for [`test_room_versions`].
use std::collections::BTreeMap;

use accounts::Profile;
use ruma::events::TimelineEventType;
use ruma::signatures::Ed25519KeyPair;
use ruma::state_res::auth_types_for_event;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName,
    OwnedUserId, RoomVersionId,
};
use serde_json::{Value, json};

use crate::persist::rules_for;
use crate::tests::{SERVER, setup, user};
use crate::*;

/// The room versions every scenario here runs for (the room-versions work extends it).
pub(crate) fn test_room_versions() -> Vec<RoomVersionId> {
    vec![RoomVersionId::V10, RoomVersionId::V11]
}

fn for_each_version(scenario: fn(&RoomVersionId)) {
    for v in test_room_versions() {
        scenario(&v);
    }
}

const REMOTE: &str = "remote.example";

/// A fake remote homeserver: its signing key and an event builder.
struct Remote {
    name: OwnedServerName,
    pair: Ed25519KeyPair,
}

/// What a remote event says, besides who sends it where.
struct Ev {
    kind: String,
    state_key: Option<String>,
    content: Value,
}

fn st(kind: &str, state_key: &str, content: Value) -> Ev {
    Ev {
        kind: kind.to_owned(),
        state_key: Some(state_key.to_owned()),
        content,
    }
}

fn message(body: &str) -> Ev {
    Ev {
        kind: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": body}),
    }
}

fn redaction(target: &OwnedEventId) -> Ev {
    Ev {
        kind: "m.room.redaction".into(),
        state_key: None,
        content: json!({"redacts": target}),
    }
}

impl Remote {
    fn new() -> Remote {
        let doc = Ed25519KeyPair::generate();
        Remote {
            name: REMOTE.try_into().expect("server name"),
            pair: Ed25519KeyPair::from_der(&doc, "r1".into()).expect("key pair"),
        }
    }

    fn keys(&self) -> StaticKeys {
        let mut m = BTreeMap::new();
        m.insert("ed25519:r1".to_owned(), self.pair.public_key().to_vec());
        let mut s = BTreeMap::new();
        s.insert(self.name.clone(), m);
        StaticKeys(s)
    }

    fn user(&self, local: &str) -> OwnedUserId {
        OwnedUserId::try_from(format!("@{local}:{REMOTE}")).expect("user id")
    }

    /// A signed PDU on `prev` with auth events chosen from `state` (the state before it).
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        version: &RoomVersionId,
        room: &OwnedRoomId,
        sender: &OwnedUserId,
        ev: Ev,
        prev: &[OwnedEventId],
        state: &StateMap,
        depth: u64,
        ts: u64,
    ) -> (OwnedEventId, CanonicalJsonObject) {
        let rules = rules_for(version).expect("rules");
        let raw = serde_json::value::to_raw_value(&ev.content).expect("raw");
        let mut auth = Vec::new();
        if ev.kind != "m.room.create" {
            for (t, k) in auth_types_for_event(
                &TimelineEventType::from(ev.kind.as_str()),
                sender,
                ev.state_key.as_deref(),
                &raw,
                &rules.authorization,
            )
            .expect("auth types")
            {
                if let Some(id) = state.get(&(t.to_string(), k.clone())) {
                    auth.push(json!(id));
                }
            }
        }
        let mut v = json!({
            "auth_events": auth,
            "prev_events": prev,
            "content": ev.content,
            "depth": depth,
            "origin_server_ts": ts,
            "room_id": room,
            "sender": sender,
            "type": &ev.kind,
        });
        if let Some(k) = &ev.state_key {
            v["state_key"] = json!(k);
        }
        if ev.kind == "m.room.redaction" && !rules.redaction.keep_room_redaction_redacts {
            v["redacts"] = v["content"]["redacts"].clone();
        }
        let mut obj: CanonicalJsonObject =
            serde_json::from_value(v).expect("canonical json object");
        ruma::signatures::hash_and_sign_event(REMOTE, &self.pair, &mut obj, &rules.redaction)
            .expect("sign");
        let id = event_id_for(version, &obj).expect("event id");
        (id, obj)
    }
}

/// A local room of `version` created by `@alice`, with `@bob:remote.example` joined
/// through `receive_pdu` and given power level `bob_level`.
struct Fixture {
    _dir: tempfile::TempDir,
    svc: RoomService,
    remote: Remote,
    keys: StaticKeys,
    version: RoomVersionId,
    room: OwnedRoomId,
    alice: OwnedUserId,
    bob: OwnedUserId,
}

impl Fixture {
    fn new(version: &RoomVersionId, bob_level: i64) -> Fixture {
        let (dir, svc) = setup();
        let remote = Remote::new();
        let keys = remote.keys();
        let alice = user("alice");
        let req = CreateRoomRequest {
            preset: Some(Preset::PublicChat),
            room_version: Some(version.to_string()),
            ..Default::default()
        };
        let room = svc.create_room(&alice, req).expect("create room");
        let bob = remote.user("bob");
        let f = Fixture {
            _dir: dir,
            svc,
            remote,
            keys,
            version: version.clone(),
            room,
            alice,
            bob,
        };
        let join = f.remote_on_tip(
            &f.bob,
            st(
                "m.room.member",
                f.bob.as_str(),
                json!({"membership": "join"}),
            ),
        );
        assert!(matches!(f.receive(join.1), Received::Accepted { .. }));
        if bob_level != 0 {
            let mut pl = f.current_content("m.room.power_levels");
            pl["users"][f.bob.as_str()] = json!(bob_level);
            f.svc
                .send_state_event(&f.alice, &f.room, "m.room.power_levels", "", pl)
                .expect("power levels");
        }
        f
    }

    fn origin(&self) -> &ruma::ServerName {
        &self.remote.name
    }

    fn receive(&self, pdu: CanonicalJsonObject) -> Received {
        self.svc
            .receive_pdu(self.origin(), pdu, &self.keys)
            .expect("receive_pdu")
    }

    fn current_content(&self, kind: &str) -> Value {
        self.svc
            .current_state_event(&self.room, kind, "")
            .expect("state")
            .map(|e| e.content())
            .unwrap_or(Value::Null)
    }

    fn extremities(&self) -> Vec<OwnedEventId> {
        self.svc
            .require_summary(&self.room)
            .expect("summary")
            .extremities
    }

    fn depth_of(&self, id: &OwnedEventId) -> u64 {
        self.svc
            .event_any(id)
            .expect("read")
            .expect("known")
            .depth()
    }

    /// A remote event on the room's current forward extremities and state.
    fn remote_on_tip(&self, sender: &OwnedUserId, ev: Ev) -> (OwnedEventId, CanonicalJsonObject) {
        let prev = self.extremities();
        let state = self.svc.current_state(&self.room).expect("state");
        let depth = prev.iter().map(|p| self.depth_of(p)).max().unwrap_or(0) + 1;
        self.remote.build(
            &self.version,
            &self.room,
            sender,
            ev,
            &prev,
            &state,
            depth,
            now_ms(),
        )
    }

    /// A remote event on one earlier event (a fork), with the state after it.
    fn remote_on(
        &self,
        sender: &OwnedUserId,
        ev: Ev,
        prev: &OwnedEventId,
        ts: u64,
    ) -> (OwnedEventId, CanonicalJsonObject) {
        let p = self.svc.event_any(prev).expect("read").expect("known");
        let state = self.svc.state_after(&p).expect("state");
        self.remote.build(
            &self.version,
            &self.room,
            sender,
            ev,
            std::slice::from_ref(prev),
            &state,
            p.depth() + 1,
            ts,
        )
    }

    fn timeline_ids(&self) -> Vec<OwnedEventId> {
        self.svc
            .timeline(&self.room, None, u64::MAX - 1, 10_000)
            .expect("timeline")
            .0
            .into_iter()
            .map(|e| e.event_id)
            .collect()
    }

    fn body(&self, id: &OwnedEventId) -> Option<Value> {
        self.svc
            .event(id)
            .expect("read")
            .and_then(|e| e.content().get("body").cloned())
    }
}

fn name_key() -> (String, String) {
    ("m.room.name".to_owned(), String::new())
}

// ---- scenarios --------------------------------------------------------------------

fn fork_resolved_by_state_res_v2(v: &RoomVersionId) {
    let f = Fixture::new(v, 50);
    let fork_point = f.extremities()[0].clone();
    // Branch A (local): Alice names the room.
    let a = f
        .svc
        .send_state_event(&f.alice, &f.room, "m.room.name", "", json!({"name": "A"}))
        .expect("name A");
    // Branch B (remote, concurrent, later timestamp): Bob names it too, on the fork point.
    let ts = f
        .svc
        .event(&a.event_id)
        .expect("r")
        .expect("a")
        .origin_server_ts()
        + 1000;
    let (b_id, b) = f.remote_on(
        &f.bob,
        st("m.room.name", "", json!({"name": "B"})),
        &fork_point,
        ts,
    );
    assert!(
        matches!(f.receive(b), Received::Accepted { .. }),
        "Bob (50) may name the room in both branches"
    );
    let mut ext = f.extremities();
    ext.sort();
    let mut want = vec![a.event_id.clone(), b_id.clone()];
    want.sort();
    assert_eq!(ext, want, "both branches are forward extremities");
    // Same power, same mainline: the later timestamp is applied last and wins.
    let current = f.svc.current_state(&f.room).expect("state");
    assert_eq!(current[&name_key()], b_id);
    let after_a = f
        .svc
        .state_after(&f.svc.event(&a.event_id).expect("r").expect("a"))
        .expect("s");
    let after_b = f
        .svc
        .state_after(&f.svc.event(&b_id).expect("r").expect("b"))
        .expect("s");
    assert_eq!(
        f.svc
            .resolve_states(&f.room, &[after_a, after_b])
            .expect("resolve"),
        current
    );
    // The next local event merges the fork.
    let m = f
        .svc
        .send_message_event(
            &f.alice,
            &f.room,
            "m.room.message",
            json!({"body": "merge"}),
            None,
        )
        .expect("merge");
    assert_eq!(f.extremities(), vec![m.event_id.clone()]);
    assert_eq!(
        f.svc.state_before(&m.event_id).expect("before")[&name_key()],
        b_id
    );
}

fn late_event_with_lower_depth(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let old = f.extremities()[0].clone();
    for i in 0..3 {
        f.svc
            .send_message_event(
                &f.alice,
                &f.room,
                "m.room.message",
                json!({"body": format!("m{i}")}),
                None,
            )
            .expect("message");
    }
    let newest = f.extremities()[0].clone();
    // Bob's message was sent long ago on `old`, and only arrives now.
    let (late_id, late) = f.remote_on(&f.bob, message("late"), &old, now_ms() - 60_000);
    let r = f.receive(late);
    let Received::Accepted { pos, .. } = r else {
        panic!("late event refused: {r:?}");
    };
    assert!(f.depth_of(&late_id) < f.depth_of(&newest));
    assert!(
        pos > f.svc.event(&newest).expect("r").expect("e").pos,
        "it is new to clients"
    );
    assert_eq!(f.timeline_ids().last(), Some(&late_id));
    let mut ext = f.extremities();
    ext.sort();
    let mut want = vec![late_id.clone(), newest];
    want.sort();
    assert_eq!(ext, want);
    assert_eq!(f.body(&late_id), Some(json!("late")));
}

fn missing_prev_events_are_asked_for(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let (e1_id, e1) = f.remote_on_tip(&f.bob, message("one"));
    // e2 on e1, which has not arrived.
    let tip = f.extremities()[0].clone();
    let state = f.svc.current_state(&f.room).expect("state");
    let (e2_id, e2) = f.remote.build(
        &f.version,
        &f.room,
        &f.bob,
        message("two"),
        std::slice::from_ref(&e1_id),
        &state,
        f.depth_of(&tip) + 2,
        now_ms(),
    );
    match f.receive(e2.clone()) {
        Received::NeedsMissingEvents {
            event_id,
            prev_events,
            auth_events,
        } => {
            assert_eq!(event_id, e2_id);
            assert_eq!(prev_events, vec![e1_id.clone()]);
            assert!(auth_events.is_empty());
        }
        other => panic!("expected NeedsMissingEvents, got {other:?}"),
    }
    assert_eq!(f.svc.event(&e2_id).expect("read"), None, "nothing stored");
    assert!(matches!(f.receive(e1), Received::Accepted { .. }));
    assert!(matches!(f.receive(e2), Received::Accepted { .. }));
    assert_eq!(f.extremities(), vec![e2_id]);
}

fn gap_accepted_with_state_ids(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let (e1_id, _never_sent) = f.remote_on_tip(&f.bob, message("lost"));
    let state = f.svc.current_state(&f.room).expect("state");
    let ids: Vec<OwnedEventId> = state.values().cloned().collect();
    let (e2_id, e2) = f.remote.build(
        &f.version,
        &f.room,
        &f.bob,
        message("after the gap"),
        std::slice::from_ref(&e1_id),
        &state,
        f.depth_of(&f.extremities()[0]) + 2,
        now_ms(),
    );
    let r = f
        .svc
        .receive_pdu_after_gap(f.origin(), e2, &ids, &f.keys)
        .expect("receive");
    assert!(matches!(r, Received::Accepted { .. }), "{r:?}");
    assert!(f.extremities().contains(&e2_id));
    assert_eq!(f.svc.state_before(&e2_id).expect("before"), state);
}

fn rejected_event_is_never_served_nor_state(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let pl_before = f
        .svc
        .current_state_event_id(&f.room, "m.room.power_levels", "")
        .expect("s");
    let tip = f.extremities();
    // Bob (0) gives himself 100.
    let mut pl = f.current_content("m.room.power_levels");
    pl["users"][f.bob.as_str()] = json!(100);
    let (bad_id, bad) = f.remote_on_tip(&f.bob, st("m.room.power_levels", "", pl));
    assert!(matches!(f.receive(bad.clone()), Received::Rejected { .. }));
    assert_eq!(f.svc.event(&bad_id).expect("read"), None);
    assert_eq!(f.svc.pdu_for_federation(&bad_id).expect("read"), None);
    assert_eq!(
        f.svc
            .event_any(&bad_id)
            .expect("read")
            .expect("stored")
            .status,
        EventStatus::Rejected
    );
    assert_eq!(
        f.svc
            .current_state_event_id(&f.room, "m.room.power_levels", "")
            .expect("s"),
        pl_before
    );
    assert!(!f.timeline_ids().contains(&bad_id));
    assert_eq!(f.extremities(), tip);
    // Idempotent, and an event authorised by the rejected one is rejected too.
    assert!(matches!(f.receive(bad), Received::Rejected { .. }));
    let mut state = f.svc.current_state(&f.room).expect("state");
    state.insert(
        ("m.room.power_levels".into(), String::new()),
        bad_id.clone(),
    );
    let (next_id, next) = f.remote.build(
        &f.version,
        &f.room,
        &f.bob,
        state_ev_topic(),
        &tip,
        &state,
        f.depth_of(&tip[0]) + 1,
        now_ms(),
    );
    assert!(matches!(f.receive(next), Received::Rejected { .. }));
    assert_eq!(f.svc.event(&next_id).expect("read"), None);
    assert_eq!(f.current_content("m.room.topic"), Value::Null);
}

fn state_ev_topic() -> Ev {
    st("m.room.topic", "", json!({"topic": "mine now"}))
}

fn soft_failed_event_is_hidden(v: &RoomVersionId) {
    let f = Fixture::new(v, 50);
    let fork_point = f.extremities()[0].clone();
    // Alice demotes Bob; Bob, not knowing, renames the room on the fork point.
    let mut pl = f.current_content("m.room.power_levels");
    pl["users"][f.bob.as_str()] = json!(0);
    let demote = f
        .svc
        .send_state_event(&f.alice, &f.room, "m.room.power_levels", "", pl)
        .expect("demote");
    let (id, pdu) = f.remote_on(
        &f.bob,
        st("m.room.name", "", json!({"name": "Bob's"})),
        &fork_point,
        now_ms(),
    );
    let r = f.receive(pdu);
    assert!(matches!(r, Received::SoftFailed { .. }), "{r:?}");
    assert_eq!(f.svc.event(&id).expect("read"), None, "hidden from clients");
    assert!(
        f.svc.pdu_for_federation(&id).expect("read").is_some(),
        "in the DAG"
    );
    assert!(!f.timeline_ids().contains(&id));
    assert_eq!(
        f.extremities(),
        vec![demote.event_id],
        "not a forward extremity"
    );
    assert_eq!(f.current_content("m.room.name"), Value::Null);
    assert!(
        f.svc.state_before(&id).is_ok(),
        "its state before it is known"
    );
}

fn outlier_is_in_no_timeline(v: &RoomVersionId) {
    // A room that lives on remote.example; a local user joins it.
    let (_d, svc) = setup();
    let remote = Remote::new();
    let keys = remote.keys();
    let creator = remote.user("creator");
    let room = OwnedRoomId::try_from(format!("!remote:{REMOTE}")).expect("room id");
    let mut state = StateMap::new();
    let mut chain = Vec::new();
    let mut prev: Vec<OwnedEventId> = Vec::new();
    let mut depth = 0;
    let mut create_content = json!({"room_version": v.as_str()});
    if !rules_for(v)
        .expect("rules")
        .authorization
        .use_room_create_sender
    {
        create_content["creator"] = json!(creator);
    }
    let events = vec![
        st("m.room.create", "", create_content),
        st(
            "m.room.member",
            creator.as_str(),
            json!({"membership": "join"}),
        ),
        st(
            "m.room.power_levels",
            "",
            json!({"users": {creator.as_str(): 100}}),
        ),
        st("m.room.join_rules", "", json!({"join_rule": "public"})),
        st(
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
        ),
        st("m.room.name", "", json!({"name": "Remote room"})),
    ];
    for ev in events {
        depth += 1;
        let key = (ev.kind.clone(), ev.state_key.clone().unwrap_or_default());
        let (id, obj) = remote.build(v, &room, &creator, ev, &prev, &state, depth, now_ms());
        state.insert(key, id.clone());
        chain.push(obj);
        prev = vec![id];
    }
    // Our user's join, as make_join/send_join would produce it (signed by us).
    let dave = user("dave");
    let join = {
        let rules = rules_for(v).expect("rules");
        let (_, mut obj) = remote.build(
            v,
            &room,
            &dave,
            st(
                "m.room.member",
                dave.as_str(),
                json!({"membership": "join"}),
            ),
            &prev,
            &state,
            depth + 1,
            now_ms(),
        );
        obj.remove("signatures");
        ruma::signatures::hash_and_sign_event(SERVER, svc.key.pair(), &mut obj, &rules.redaction)
            .expect("sign");
        obj
    };
    let state_pdus = chain.clone();
    let joined = svc
        .import_join(&room, v, join, state_pdus, Vec::new(), &keys)
        .expect("import_join");
    // The state events are outliers: known, in the current state, in no timeline.
    let timeline = svc
        .timeline(&room, None, u64::MAX - 1, 100)
        .expect("timeline")
        .0;
    assert_eq!(
        timeline
            .iter()
            .map(|e| e.event_id.clone())
            .collect::<Vec<_>>(),
        vec![joined.event_id.clone()]
    );
    let name_id = state[&name_key()].clone();
    let name = svc
        .event(&name_id)
        .expect("read")
        .expect("outlier is served");
    assert_eq!(name.status, EventStatus::Outlier);
    assert_eq!(
        svc.current_state_event_id(&room, "m.room.name", "")
            .expect("s"),
        Some(name_id)
    );
    assert!(svc.is_joined(&room, &dave).expect("member"));
    assert!(
        svc.rooms_for_user(&dave)
            .expect("rooms")
            .iter()
            .any(|r| r.room_id == room)
    );
    assert_eq!(svc.room_version(&room).expect("v"), Some(v.clone()));
    let before = svc.state_before(&joined.event_id).expect("before");
    assert_eq!(before, state);
    // The paginated history holds only the join, too.
    let page = svc
        .paginate(&room, u64::MAX - 1, None, true, 100)
        .expect("page");
    assert_eq!(page.len(), 1);
    // A remote event after the join is accepted on top of it.
    let (msg_id, msg) = remote.build(
        v,
        &room,
        &creator,
        message("welcome"),
        std::slice::from_ref(&joined.event_id),
        &svc.current_state(&room).expect("state"),
        depth + 2,
        now_ms(),
    );
    let r = svc.receive_pdu(&remote.name, msg, &keys).expect("receive");
    assert!(matches!(r, Received::Accepted { .. }), "{r:?}");
    assert!(
        svc.visible_to(&dave, &svc.event(&msg_id).expect("r").expect("m"))
            .expect("vis")
    );
    // An outlier received on its own is in no timeline either.
    let (o_id, o) = remote.build(
        v,
        &room,
        &creator,
        st("m.room.topic", "", json!({"topic": "side"})),
        std::slice::from_ref(&msg_id),
        &svc.current_state(&room).expect("state"),
        depth + 3,
        now_ms(),
    );
    assert!(matches!(
        svc.receive_outlier(v, o, &keys).expect("outlier"),
        Received::Accepted { pos: 0, .. }
    ));
    assert!(
        !svc.timeline(&room, None, u64::MAX - 1, 100)
            .expect("t")
            .0
            .iter()
            .any(|e| e.event_id == o_id)
    );
    assert_eq!(
        svc.current_state_event_id(&room, "m.room.topic", "")
            .expect("s"),
        None
    );
}

fn remote_redaction_without_power_is_refused(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let alices = f
        .svc
        .send_message_event(
            &f.alice,
            &f.room,
            "m.room.message",
            json!({"body": "alice's"}),
            None,
        )
        .expect("message");
    let redact = redaction;
    let (_, r) = f.remote_on_tip(&f.bob, redact(&alices.event_id));
    // Redactions pass the authorization rules (v3+); applying one is the server's call.
    assert!(matches!(f.receive(r), Received::Accepted { .. }));
    assert_eq!(
        f.body(&alices.event_id),
        Some(json!("alice's")),
        "not Bob's to redact"
    );
    // Bob may redact his own, and his server's other users' events.
    let (bobs, m) = f.remote_on_tip(&f.bob, message("bob's"));
    assert!(matches!(f.receive(m), Received::Accepted { .. }));
    let carol = f.remote.user("carol");
    let (_, j) = f.remote_on_tip(
        &carol,
        st(
            "m.room.member",
            carol.as_str(),
            json!({"membership": "join"}),
        ),
    );
    assert!(matches!(f.receive(j), Received::Accepted { .. }));
    let (_, r) = f.remote_on_tip(&carol, redact(&bobs));
    assert!(matches!(f.receive(r), Received::Accepted { .. }));
    assert_eq!(f.body(&bobs), None, "same server: applied");
}

fn redaction_before_its_target(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let tip = f.extremities()[0].clone();
    let (target_id, target) = f.remote_on(&f.bob, message("oops"), &tip, now_ms());
    let (red_id, red) = f.remote_on(&f.bob, redaction(&target_id), &tip, now_ms());
    assert!(matches!(f.receive(red), Received::Accepted { .. }));
    assert!(matches!(f.receive(target), Received::Accepted { .. }));
    let ev = f.svc.event(&target_id).expect("read").expect("stored");
    assert_eq!(f.body(&target_id), None, "redacted on arrival");
    assert_eq!(
        ev.redacted_because
            .as_ref()
            .and_then(|r| r.get("event_id"))
            .cloned(),
        Some(json!(red_id))
    );
}

fn history_visibility_at_a_past_event(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    f.svc
        .send_state_event(
            &f.alice,
            &f.room,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "joined"}),
        )
        .expect("visibility");
    let before = f
        .svc
        .send_message_event(
            &f.alice,
            &f.room,
            "m.room.message",
            json!({"body": "before"}),
            None,
        )
        .expect("m");
    let carol = user("carol");
    f.svc
        .join(&carol, f.room.as_str(), &Profile::default(), None)
        .expect("join");
    let (after_id, after) = f.remote_on_tip(&f.bob, message("after"));
    assert!(matches!(f.receive(after), Received::Accepted { .. }));
    // Bob wrote this before Carol joined (on the event before her join); it arrives
    // after her join, at a later stream position than the join.
    let (past_id, past) = f.remote_on(&f.bob, message("past"), &before.event_id, now_ms());
    assert!(matches!(f.receive(past), Received::Accepted { .. }));
    let ev = |id: &OwnedEventId| f.svc.event(id).expect("r").expect("e");
    assert!(
        !f.svc
            .visible_to(&carol, &ev(&before.event_id))
            .expect("vis")
    );
    assert!(f.svc.visible_to(&carol, &ev(&after_id)).expect("vis"));
    assert!(
        f.svc
            .visible_to(&f.alice, &ev(&before.event_id))
            .expect("vis")
    );
    assert!(
        !f.svc.visible_to(&carol, &ev(&past_id)).expect("vis"),
        "Carol was not joined at that event, whatever its stream position"
    );
    assert!(f.svc.visible_to(&f.alice, &ev(&past_id)).expect("vis"));
    let shown = f
        .svc
        .client_event_for(&ev(&past_id), &carol, None, 0)
        .expect("client");
    assert_eq!(shown["unsigned"]["membership"], json!("leave"));
    // The events after it still see Carol joined (the state log follows the resolution).
    let next = f
        .svc
        .send_message_event(
            &f.alice,
            &f.room,
            "m.room.message",
            json!({"body": "merged"}),
            None,
        )
        .expect("m");
    assert!(f.svc.visible_to(&carol, &ev(&next.event_id)).expect("vis"));
}

fn bad_signatures_and_foreign_senders_are_dropped(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    // Tampered after signing: the signature no longer matches.
    let (id, mut pdu) = f.remote_on_tip(&f.bob, message("signed"));
    pdu.insert("depth".into(), CanonicalJsonValue::Integer(999u32.into()));
    assert!(matches!(
        f.svc.receive_pdu(f.origin(), pdu, &f.keys),
        Err(RoomError::Forbidden(_))
    ));
    assert_eq!(f.svc.event_any(&id).expect("read"), None);
    // remote.example cannot speak for a user of another server.
    let mallory = OwnedUserId::try_from("@mallory:elsewhere.example").expect("user");
    let (_, pdu) = f.remote_on_tip(&mallory, message("forged"));
    assert!(matches!(
        f.svc.receive_pdu(f.origin(), pdu, &f.keys),
        Err(RoomError::Forbidden(_))
    ));
    // A changed content (hash mismatch, signature over the redacted form still valid)
    // is stored redacted.
    let (id, mut pdu) = f.remote_on_tip(&f.bob, message("original"));
    if let Some(CanonicalJsonValue::Object(c)) = pdu.get_mut("content") {
        c.insert("body".into(), CanonicalJsonValue::String("changed".into()));
    }
    assert!(matches!(f.receive(pdu), Received::Accepted { .. }));
    assert_eq!(f.body(&id), None);
    // Unknown room.
    let other = OwnedRoomId::try_from(format!("!nope:{REMOTE}")).expect("room");
    let (_, pdu) = f.remote.build(
        v,
        &other,
        &f.bob,
        message("x"),
        &[],
        &StateMap::new(),
        1,
        now_ms(),
    );
    assert!(matches!(
        f.svc.receive_pdu(f.origin(), pdu, &f.keys),
        Err(RoomError::UnknownRoom(_))
    ));
}

fn remote_invite_shows_in_invite_state(v: &RoomVersionId) {
    let (_d, svc) = setup();
    let remote = Remote::new();
    let keys = remote.keys();
    let room = OwnedRoomId::try_from(format!("!inv:{REMOTE}")).expect("room");
    let erin = user("erin");
    let inviter = remote.user("inviter");
    let (id, invite) = remote.build(
        v,
        &room,
        &inviter,
        st(
            "m.room.member",
            erin.as_str(),
            json!({"membership": "invite"}),
        ),
        &[],
        &StateMap::new(),
        5,
        now_ms(),
    );
    let stripped = vec![
        json!({"type": "m.room.name", "state_key": "", "content": {"name": "Invited"}, "sender": inviter}),
    ];
    let signed = svc
        .receive_invite(&remote.name, v, invite.clone(), stripped.clone(), &keys)
        .expect("invite");
    let sigs = Value::from(signed["signatures"].clone());
    assert!(
        sigs.get(SERVER).is_some() && sigs.get(REMOTE).is_some(),
        "countersigned"
    );
    let rooms = svc.rooms_for_user(&erin).expect("rooms");
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].membership, Membership::Invite);
    assert_eq!(rooms[0].event_id, id);
    let shown = svc.invite_state(&room, &erin).expect("invite state");
    assert!(
        shown
            .iter()
            .any(|e| e["content"]["name"] == json!("Invited"))
    );
    assert!(
        shown
            .iter()
            .any(|e| e["type"] == json!("m.room.member") && e["state_key"] == json!(erin.as_str()))
    );
    // Another server may not invite on the inviter's behalf.
    let other: &ruma::ServerName = "other.example".try_into().expect("name");
    assert!(matches!(
        svc.receive_invite(other, v, invite, stripped, &keys),
        Err(RoomError::Forbidden(_))
    ));
}

macro_rules! per_version {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for_each_version(super::$name);
            }
        )*
    };
}

mod each_version {
    use super::for_each_version;
    per_version!(
        fork_resolved_by_state_res_v2,
        late_event_with_lower_depth,
        missing_prev_events_are_asked_for,
        gap_accepted_with_state_ids,
        rejected_event_is_never_served_nor_state,
        soft_failed_event_is_hidden,
        outlier_is_in_no_timeline,
        remote_redaction_without_power_is_refused,
        redaction_before_its_target,
        history_visibility_at_a_past_event,
        bad_signatures_and_foreign_senders_are_dropped,
        remote_invite_shows_in_invite_state,
    );
}

#[test]
fn rooms_are_written_in_parallel() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let a = crate::tests::create(&svc, &alice, Preset::PublicChat);
    let b = crate::tests::create(&svc, &alice, Preset::PublicChat);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // Room A is busy (its lock held) while room B is written from another thread.
        let busy = svc.lock_room(&a);
        let (svc, alice, b) = (&svc, &alice, &b);
        s.spawn(move || {
            let r = svc.send_message_event(alice, b, "m.room.message", json!({"body": "b"}), None);
            let _ = tx.send(r.is_ok());
        });
        let written = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(busy);
        assert_eq!(
            written,
            Ok(true),
            "a write to room B waited for room A's lock"
        );
    });
    // And a write to A waits for A's lock, then goes through.
    svc.send_message_event(&alice, &a, "m.room.message", json!({"body": "a"}), None)
        .expect("write A");
}
