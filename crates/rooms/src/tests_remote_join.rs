//! Rooms joined and invited to over federation, redactions and signatures (scenarios
//! of `tests_remote.rs`).
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
};
use serde_json::{Value, json};

use crate::persist::rules_for;
use crate::tests::{SERVER, setup, user};
use crate::tests_remote::*;
use crate::*;

/// A room created on remote.example by `@creator:remote.example`: public, shared
/// history, named; its state, the events in order, the last event and its depth.
pub(crate) struct RemoteRoom {
    pub room: OwnedRoomId,
    pub creator: OwnedUserId,
    pub state: StateMap,
    pub chain: Vec<CanonicalJsonObject>,
    pub prev: Vec<OwnedEventId>,
    pub depth: u64,
}

pub(crate) fn remote_room(v: &RoomVersionId, remote: &Remote, local: &str) -> RemoteRoom {
    let creator = remote.user("creator");
    let mut room = OwnedRoomId::try_from(format!("{local}:{REMOTE}")).expect("room id");
    let rules = rules_for(v).expect("rules");
    let mut state = StateMap::new();
    let mut chain = Vec::new();
    let mut prev: Vec<OwnedEventId> = Vec::new();
    let mut depth = 0;
    // The label keeps two rooms made in the same millisecond apart (a v12 room ID is the
    // create event's hash).
    let mut create_content = json!({"room_version": v.as_str(), "org.pulse.test": local});
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
            // v12 creators have infinite power and may not be listed.
            if rules.authorization.explicitly_privilege_room_creators {
                json!({"users": {}})
            } else {
                json!({"users": {creator.as_str(): 100}})
            },
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
        let is_create = ev.kind == "m.room.create";
        let (id, obj) = remote.build(v, &room, &creator, ev, &prev, &state, depth, now_ms());
        if is_create && crate::version::room_id_from_create_event(&rules) {
            room = crate::version::room_id_of_create_event(&id).expect("v12 room id");
        }
        state.insert(key, id.clone());
        chain.push(obj);
        prev = vec![id];
    }
    RemoteRoom {
        room,
        creator,
        state,
        chain,
        prev,
        depth,
    }
}

/// Our user's join on `rr`'s last event, as make_join + send_join produce it.
fn local_join(
    svc: &RoomService,
    v: &RoomVersionId,
    remote: &Remote,
    rr: &RemoteRoom,
    who: &OwnedUserId,
) -> CanonicalJsonObject {
    let (_, mut obj) = remote.build(
        v,
        &rr.room,
        who,
        st("m.room.member", who.as_str(), json!({"membership": "join"})),
        &rr.prev,
        &rr.state,
        rr.depth + 1,
        now_ms(),
    );
    obj.remove("signatures");
    obj.remove("hashes");
    svc.sign_template(v, obj).expect("sign").1
}

pub(crate) fn import_join_leaves_out_rejected_and_unsigned_state(v: &RoomVersionId) {
    let (_d, svc) = setup();
    let remote = Remote::new();
    let keys = remote.keys();
    let mut rr = remote_room(v, &remote, "!rej");
    // A topic by someone who never joined: fails its own auth events.
    let nobody = remote.user("nobody");
    let (bogus_id, bogus) = remote.build(
        v,
        &rr.room,
        &nobody,
        st("m.room.topic", "", json!({"topic": "bogus"})),
        &rr.prev,
        &rr.state,
        rr.depth + 1,
        now_ms(),
    );
    // A second name event whose signature was tampered with: dropped.
    let (forged_id, mut forged) = remote.build(
        v,
        &rr.room,
        &rr.creator,
        st("m.room.avatar", "", json!({"url": "mxc://x/y"})),
        &rr.prev,
        &rr.state,
        rr.depth + 1,
        now_ms(),
    );
    forged.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(1u32.into()),
    );
    let mut state_pdus = rr.chain.clone();
    state_pdus.push(bogus);
    state_pdus.push(forged);
    rr.depth += 1;
    let dave = user("dave");
    let join = local_join(&svc, v, &remote, &rr, &dave);
    svc.import_join(&rr.room, v, join, state_pdus, Vec::new(), &keys)
        .expect("import_join");
    assert!(svc.is_joined(&rr.room, &dave).expect("joined"));
    assert_eq!(
        svc.current_state_event_id(&rr.room, "m.room.topic", "")
            .expect("s"),
        None
    );
    assert_eq!(
        svc.event_any(&bogus_id).expect("read").map(|e| e.status),
        Some(EventStatus::Rejected)
    );
    assert_eq!(svc.event(&bogus_id).expect("read"), None);
    assert_eq!(svc.event_any(&forged_id).expect("read"), None, "dropped");
    assert_eq!(
        svc.current_state_event_id(&rr.room, "m.room.avatar", "")
            .expect("s"),
        None
    );
    // A join that the room's state does not allow is refused and nothing is stored.
    let (_d2, svc2) = setup();
    let mut invite_only = remote_room(v, &remote, "!closed");
    let (jr_id, jr) = remote.build(
        v,
        &invite_only.room,
        &invite_only.creator,
        st("m.room.join_rules", "", json!({"join_rule": "invite"})),
        &invite_only.prev,
        &invite_only.state,
        invite_only.depth + 1,
        now_ms(),
    );
    invite_only
        .state
        .insert(("m.room.join_rules".into(), String::new()), jr_id.clone());
    invite_only.chain.push(jr);
    invite_only.prev = vec![jr_id];
    invite_only.depth += 1;
    let join = local_join(&svc2, v, &remote, &invite_only, &dave);
    // The state is the latest event of each key (the public join rule is history).
    let current: Vec<CanonicalJsonObject> = invite_only
        .chain
        .iter()
        .filter(|e| {
            let id = event_id_for(v, e).expect("id");
            invite_only.state.values().any(|s| *s == id)
        })
        .cloned()
        .collect();
    assert!(matches!(
        svc2.import_join(&invite_only.room, v, join, current, Vec::new(), &keys),
        Err(RoomError::Forbidden(_))
    ));
    assert!(!svc2.room_exists(&invite_only.room).expect("exists"));
    assert!(svc2.rooms_for_user(&dave).expect("rooms").is_empty());
}

/// Two local users join the same remote room at once: each send_join answer is a state
/// without the other's join. The second import must not drop the first (acknowledged) join.
pub(crate) fn racing_first_joins_both_stay_joined(v: &RoomVersionId) {
    let (_d, svc) = setup();
    let remote = Remote::new();
    let keys = remote.keys();
    let rr = remote_room(v, &remote, "!race");
    let (dave, erin) = (user("dave"), user("erin"));
    let dave_join = local_join(&svc, v, &remote, &rr, &dave);
    let erin_join = local_join(&svc, v, &remote, &rr, &erin);
    svc.import_join(&rr.room, v, dave_join, rr.chain.clone(), Vec::new(), &keys)
        .expect("dave's import");
    let erin_sent = svc
        .import_join(&rr.room, v, erin_join, rr.chain.clone(), Vec::new(), &keys)
        .expect("erin's import");
    assert!(
        svc.is_joined(&rr.room, &dave).expect("read"),
        "{v}: dave's join kept"
    );
    assert!(
        svc.is_joined(&rr.room, &erin).expect("read"),
        "{v}: erin joined"
    );
    let state = svc.current_state(&rr.room).expect("state");
    assert!(state.contains_key(&("m.room.member".to_owned(), dave.to_string())));
    assert_eq!(
        state.get(&("m.room.member".to_owned(), erin.to_string())),
        Some(&erin_sent.event_id)
    );
    // Both joins are forward extremities: the next local event cites both forks.
    let summary = svc.summary(&rr.room).expect("read").expect("summary");
    assert_eq!(
        summary.extremities.len(),
        2,
        "{v}: {:?}",
        summary.extremities
    );
}

pub(crate) fn missing_auth_events_are_asked_for(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let carol = f.remote.user("carol");
    // Carol's join (never delivered) and her message on it.
    let (join_id, join) = f.remote_on_tip(
        &carol,
        st(
            "m.room.member",
            carol.as_str(),
            json!({"membership": "join"}),
        ),
    );
    let mut state = f.svc.current_state(&f.room).expect("state");
    state.insert(("m.room.member".into(), carol.to_string()), join_id.clone());
    let tip = f.extremities()[0].clone();
    let (msg_id, msg) = f.remote.build(
        &f.version,
        &f.room,
        &carol,
        message("hello"),
        std::slice::from_ref(&join_id),
        &state,
        f.depth_of(&tip) + 2,
        now_ms(),
    );
    match f.receive(msg.clone()) {
        Received::NeedsMissingEvents {
            prev_events,
            auth_events,
            ..
        } => {
            assert_eq!(prev_events, vec![join_id.clone()]);
            assert_eq!(auth_events, vec![join_id.clone()]);
        }
        other => panic!("expected NeedsMissingEvents, got {other:?}"),
    }
    // An outlier needs its auth events stored first, too.
    assert!(matches!(
        f.svc
            .receive_outlier(v, msg.clone(), &f.keys)
            .expect("outlier"),
        Received::NeedsMissingEvents { .. }
    ));
    assert!(matches!(f.receive(join), Received::Accepted { .. }));
    assert!(matches!(f.receive(msg), Received::Accepted { .. }));
    assert_eq!(f.extremities(), vec![msg_id]);
}

pub(crate) fn outlier_is_in_no_timeline(v: &RoomVersionId) {
    // A room that lives on remote.example; a local user joins it.
    let (_d, svc) = setup();
    let remote = Remote::new();
    let keys = remote.keys();
    let RemoteRoom {
        room,
        creator,
        state,
        chain,
        prev,
        depth,
    } = remote_room(v, &remote, "!remote");
    // Our user's join, as make_join/send_join would produce it (signed by us).
    let dave = user("dave");
    let join = {
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
        obj.remove("hashes");
        svc.sign_template(v, obj).expect("sign").1
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

pub(crate) fn remote_redaction_without_power_is_refused(v: &RoomVersionId) {
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
    let received = f.receive(r);
    if rules_for(v)
        .expect("rules")
        .authorization
        .special_case_room_redaction
    {
        // v1/v2: the authorization rules themselves refuse it (no power, and the event
        // IDs are on different servers).
        assert!(
            matches!(received, Received::Rejected { .. }),
            "{received:?}"
        );
    } else {
        // v3+: redactions pass the authorization rules; applying one is the server's call.
        assert!(
            matches!(received, Received::Accepted { .. }),
            "{received:?}"
        );
    }
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

pub(crate) fn redaction_before_its_target(v: &RoomVersionId) {
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

pub(crate) fn bad_signatures_and_foreign_senders_are_dropped(v: &RoomVersionId) {
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

pub(crate) fn remote_invite_shows_in_invite_state(v: &RoomVersionId) {
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

pub(crate) fn make_join_template_round_trip(v: &RoomVersionId) {
    let f = Fixture::new(v, 0);
    let erin = f.remote.user("erin");
    let (version, mut template) = f
        .svc
        .event_template(
            &f.room,
            &erin,
            "m.room.member",
            Some(erin.as_str()),
            json!({"membership": "join"}),
        )
        .expect("template");
    assert_eq!(version, *v);
    assert!(!template.contains_key("signatures"));
    let rules = rules_for(v).expect("rules");
    // v1/v2: the joining server names the event (`$random:its-name`).
    crate::version::assign_local_event_id(&rules, &mut template, f.origin());
    ruma::signatures::hash_and_sign_event(REMOTE, &f.remote.pair, &mut template, &rules.redaction)
        .expect("sign");
    let r = f.receive(template);
    assert!(matches!(r, Received::Accepted { .. }), "{r:?}");
    assert!(f.svc.is_joined(&f.room, &erin).expect("joined"));
    // The auth chain of the join reaches the create event.
    let create = f
        .svc
        .require_summary(&f.room)
        .expect("summary")
        .create_event;
    assert!(
        f.svc
            .auth_chain_ids(&[r.event_id().to_owned()])
            .contains(&create)
    );
    // So does the chain served to other servers (/event_auth, /state_ids), in every
    // version's reference format (v1 pairs) and with v12's unlisted create event.
    let served = f
        .svc
        .auth_chain_for_federation(&[r.event_id().to_owned()], 100);
    assert!(served.contains(&create), "{served:?}");
    let power = f
        .svc
        .current_state_event_id(&f.room, "m.room.power_levels", "")
        .expect("s")
        .expect("power levels");
    assert!(served.contains(&power), "{served:?}");
    assert!(!served.contains(&r.event_id().to_owned()));
}
