//! Remote events in a room's DAG: forks, late events, missing prevs, gaps, rejected
//! and soft-failed events, history visibility (scenarios of `tests_remote.rs`).
use crate::MemberProfile as Profile;
use ruma::{OwnedEventId, RoomVersionId};
use serde_json::{Value, json};

use crate::tests::user;
use crate::tests_remote::*;
use crate::*;

/// The fork of two concurrent names, resolved by the room version's algorithm (v2, or
/// v1 for room version 1).
pub(crate) fn fork_resolved_by_state_res_v2(v: &RoomVersionId) {
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
    let current = f.svc.current_state(&f.room).expect("state");
    if *v == RoomVersionId::V1 {
        // State resolution v1: same depth, so the lowest sha1(event ID) wins.
        let sha = |id: &OwnedEventId| {
            use sha1::Digest;
            sha1::Sha1::digest(id.as_str().as_bytes()).to_vec()
        };
        let want = if sha(&a.event_id) < sha(&b_id) {
            a.event_id.clone()
        } else {
            b_id.clone()
        };
        assert_eq!(current[&name_key()], want);
    } else {
        // v2: same power, same mainline: the later timestamp is applied last and wins.
        assert_eq!(current[&name_key()], b_id);
    }
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
        current[&name_key()]
    );
}

pub(crate) fn late_event_with_lower_depth(v: &RoomVersionId) {
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

pub(crate) fn missing_prev_events_are_asked_for(v: &RoomVersionId) {
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

pub(crate) fn gap_accepted_with_state_ids(v: &RoomVersionId) {
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

pub(crate) fn rejected_event_is_never_served_nor_state(v: &RoomVersionId) {
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

pub(crate) fn state_ev_topic() -> Ev {
    st("m.room.topic", "", json!({"topic": "mine now"}))
}

pub(crate) fn soft_failed_event_is_hidden(v: &RoomVersionId) {
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

pub(crate) fn history_visibility_at_a_past_event(v: &RoomVersionId) {
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
