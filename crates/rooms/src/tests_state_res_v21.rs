//! State resolution v2.1 (room version 12, MSC4297) at a gap: a remote server hands over a
//! wrong state for the events before the gap, and the resolution against our own forward
//! extremity must still land on the right state. The two scenarios of Complement's
//! `TestMSC4297StateResolutionV2_1_*`, with the remote events built here.
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedUserId, RoomVersionId};
use serde_json::json;

use crate::MemberProfile as Profile;
use crate::tests::user;
use crate::tests_remote::*;
use crate::*;

/// `n` membership events of `sender` (display name changes), each on the previous one,
/// starting on `prev` with the state `state` before the first (the remote's view).
fn member_chain(
    f: &Fixture,
    sender: &OwnedUserId,
    prev: &OwnedEventId,
    mut state: StateMap,
    n: usize,
) -> Vec<(OwnedEventId, CanonicalJsonObject)> {
    let first_depth = f.depth_of(prev) + 1;
    // One millisecond apart: state resolution orders same-position events by timestamp.
    let first_ts = now_ms();
    let mut prev = prev.clone();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (id, pdu) = f.remote.build(
            &f.version,
            &f.room,
            sender,
            st(
                "m.room.member",
                sender.as_str(),
                json!({"membership": "join", "displayname": format!("{sender} {i}")}),
            ),
            std::slice::from_ref(&prev),
            &state,
            first_depth + i as u64,
            first_ts + i as u64,
        );
        state.insert(("m.room.member".to_owned(), sender.to_string()), id.clone());
        out.push((id.clone(), pdu));
        prev = id;
    }
    out
}

fn key(t: &str, k: &str) -> (String, String) {
    (t.to_owned(), k.to_owned())
}

/// Receive the chain's last event as after a gap: every event before the one just before
/// it is only an outlier (the auth chain the remote gave), the one before is in the state
/// the remote reports, together with `other_state` (its claim about the rest of the room).
fn receive_after_gap(
    f: &Fixture,
    chain: &[(OwnedEventId, CanonicalJsonObject)],
    other_state: &[OwnedEventId],
) -> Received {
    let (last, rest) = chain.split_last().expect("a chain");
    for (_, pdu) in rest {
        let r = f
            .svc
            .receive_outlier(&f.version, pdu.clone(), &f.keys)
            .expect("outlier");
        assert!(matches!(r, Received::Accepted { .. }), "{r:?}");
    }
    let mut state_before: Vec<OwnedEventId> = other_state.to_vec();
    state_before.push(rest.last().expect("two events at least").0.clone());
    f.svc
        .receive_pdu_after_gap(f.origin(), last.1.clone(), &state_before, &f.keys)
        .expect("receive after gap")
}

/// MSC4297 problem A: the remote claims the join rule is still public (the room was made
/// invite-only, then its maker left). v2 starts the iterative auth checks from the
/// unconflicted state (the maker left), so the invite rule cannot be replayed and the wrong
/// one wins; v2.1 starts from the empty set and the invite rule stays.
#[test]
fn v12_gap_with_a_stale_join_rule_keeps_the_newer_rule() {
    let f = Fixture::new(&RoomVersionId::V12, 0);
    let carol = user("carol");
    f.svc
        .join(&carol, f.room.as_str(), &Profile::default(), None)
        .expect("carol joins");
    let public =
        f.svc.current_state(&f.room).expect("state")[&key("m.room.join_rules", "")].clone();
    // A later timestamp than the public rule's (same sender and power: ts decides the order).
    std::thread::sleep(std::time::Duration::from_millis(2));
    let invite = f
        .svc
        .send_state_event(
            &f.alice,
            &f.room,
            "m.room.join_rules",
            "",
            json!({"join_rule": "invite"}),
        )
        .expect("invite only")
        .event_id;
    let alice_leave = f
        .svc
        .leave(&f.alice, &f.room, None)
        .expect("leave")
        .event_id;
    let tip = f.extremities()[0].clone();
    let state = f.svc.current_state(&f.room).expect("state");
    let chain = member_chain(&f, &f.bob, &tip, state.clone(), 12);
    let claimed = vec![
        state[&key("m.room.create", "")].clone(),
        state[&key("m.room.power_levels", "")].clone(),
        state[&key("m.room.member", carol.as_str())].clone(),
        public.clone(),
        alice_leave.clone(),
    ];
    let r = receive_after_gap(&f, &chain, &claimed);
    assert!(matches!(r, Received::Accepted { .. }), "{r:?}");
    let now = f.svc.current_state(&f.room).expect("state");
    assert_eq!(
        now[&key("m.room.join_rules", "")],
        invite,
        "the invite rule stays"
    );
    assert_eq!(
        now[&key("m.room.member", f.alice.as_str())],
        alice_leave,
        "the maker is not rejoined"
    );
    assert_eq!(
        now[&key("m.room.member", f.bob.as_str())],
        chain.last().expect("chain").0
    );
}

/// MSC4297 problem B: the remote claims an old power level event. The newer ones are on an
/// auth path between the conflicted events (the conflicted state subgraph), so v2.1 replays
/// them and the newest power levels stay.
#[test]
fn v12_gap_with_a_stale_power_level_keeps_the_newest() {
    let f = Fixture::new(&RoomVersionId::V12, 0);
    let (al, bo, zara) = (user("al"), user("bo"), user("zara"));
    // As in the MSC: power levels naming users only (the other levels are the defaults,
    // so a user of level 50 may change them).
    let mut pl = json!({"users": {al.as_str(): 100}});
    let pl1 = f
        .svc
        .send_state_event(&f.alice, &f.room, "m.room.power_levels", "", pl.clone())
        .expect("pl1")
        .event_id;
    for u in [&al, &bo] {
        f.svc
            .join(u, f.room.as_str(), &Profile::default(), None)
            .expect("join");
    }
    pl["users"][bo.as_str()] = json!(50);
    f.svc
        .send_state_event(&al, &f.room, "m.room.power_levels", "", pl.clone())
        .expect("pl2");
    let eve = f.remote.user("eve");
    pl["users"][eve.as_str()] = json!(50);
    let pl3 = f
        .svc
        .send_state_event(&bo, &f.room, "m.room.power_levels", "", pl.clone())
        .expect("pl3")
        .event_id;
    f.svc
        .join(&zara, f.room.as_str(), &Profile::default(), None)
        .expect("zara joins");
    // Eve joins on pl3 (a fork beside Zara's join).
    let (eve_join, pdu) = f.remote_on(
        &eve,
        st("m.room.member", eve.as_str(), json!({"membership": "join"})),
        &pl3,
        now_ms(),
    );
    assert!(matches!(f.receive(pdu), Received::Accepted { .. }));
    let state = f
        .svc
        .state_after(&f.svc.event_any(&eve_join).expect("r").expect("eve join"))
        .expect("state");
    let chain = member_chain(&f, &eve, &eve_join, state.clone(), 12);
    let claimed = vec![
        state[&key("m.room.create", "")].clone(),
        state[&key("m.room.member", f.alice.as_str())].clone(),
        pl1.clone(),
        state[&key("m.room.join_rules", "")].clone(),
        state[&key("m.room.member", f.bob.as_str())].clone(),
        state[&key("m.room.member", al.as_str())].clone(),
        state[&key("m.room.member", bo.as_str())].clone(),
    ];
    let r = receive_after_gap(&f, &chain, &claimed);
    assert!(matches!(r, Received::Accepted { .. }), "{r:?}");
    let now = f.svc.current_state(&f.room).expect("state");
    assert_eq!(
        now[&key("m.room.power_levels", "")],
        pl3,
        "the newest power levels stay"
    );
}
