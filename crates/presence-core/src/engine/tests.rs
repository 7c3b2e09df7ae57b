//! One test per row of the truth table in `docs/presence.md` (named `row_NN_…`), plus
//! edge-triggering and persistence tests.

use ruma::{UserId, user_id};

use super::*;
use crate::view::Audience;

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
/// An arbitrary epoch so that no test accidentally relies on time starting at zero.
const T0: u64 = 1_700_000_000_000;

fn at(ms: u64) -> u64 {
    T0 + ms
}

fn alice() -> &'static UserId {
    user_id!("@alice:example.org")
}

fn engine() -> PresenceEngine {
    PresenceEngine::new(PresenceConfig::default())
}

fn msg(text: &str) -> Option<StatusMsg> {
    StatusMsg::new(text).unwrap()
}

/// The visible triple of the truth table.
fn seen(engine: &PresenceEngine, now: u64) -> (PresenceState, Option<String>, bool) {
    let p = engine.current(alice(), now);
    (
        p.state,
        p.status_msg.map(|m| m.as_str().to_owned()),
        p.currently_active,
    )
}

/// Starts and immediately ends a sync (a `timeout=0` poll).
fn poll(engine: &mut PresenceEngine, device: &str, set_presence: Option<DeviceState>, now: u64) {
    let started = engine.sync_started(alice(), device, set_presence, now);
    if let Some(ticket) = started.ticket {
        let _ = engine.sync_ended(ticket, now);
    }
}

/// Starts a long-poll that stays in flight.
fn hold(
    engine: &mut PresenceEngine,
    device: &str,
    set_presence: Option<DeviceState>,
    now: u64,
) -> SyncTicket {
    engine
        .sync_started(alice(), device, set_presence, now)
        .ticket
        .expect("counted sync")
}

use PresenceState::{Busy, Disabled, Offline, Online, Unavailable};

// ---- rows -------------------------------------------------------------------------------

#[test]
fn row_01_unknown_user_is_offline() {
    let e = engine();
    assert_eq!(seen(&e, at(0)), (Offline, None, false));
    assert_eq!(e.current(alice(), at(0)).last_active_ts, None);
}

#[test]
fn row_02_plain_sync_is_online_and_active() {
    let mut e = engine();
    let started = e.sync_started(alice(), "A", None, at(0));
    assert!(started.ticket.is_some());
    let change = started.change.unwrap();
    assert_eq!(change.previous.state, Offline);
    assert_eq!(change.current.state, Online);
    assert_eq!(seen(&e, at(0)), (Online, None, true));
}

#[test]
fn row_03_sync_offline_does_not_count() {
    let mut e = engine();
    let started = e.sync_started(alice(), "A", Some(DeviceState::Offline), at(0));
    assert!(started.ticket.is_none());
    assert!(started.change.is_none());
    assert_eq!(e.user_count(), 0);
    // ...and it does not take an online device offline either.
    poll(&mut e, "B", None, at(0));
    let started = e.sync_started(alice(), "B", Some(DeviceState::Offline), at(1));
    assert!(started.change.is_none());
    assert_eq!(seen(&e, at(1)), (Online, None, true));
}

#[test]
fn row_04_sync_unavailable_is_unavailable() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Unavailable), at(0));
    assert_eq!(seen(&e, at(0)), (Unavailable, None, false));
    assert_eq!(
        e.current(alice(), at(0)).last_active_ts,
        None,
        "idle signal is not activity"
    );
}

#[test]
fn row_05_sync_busy_is_busy() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Busy), at(0));
    assert_eq!(seen(&e, at(0)), (Busy, None, true));
}

#[test]
fn row_06_highest_device_wins() {
    let mut e = engine();
    poll(&mut e, "PHONE", Some(DeviceState::Unavailable), at(0));
    poll(&mut e, "LAPTOP", Some(DeviceState::Online), at(1));
    assert_eq!(seen(&e, at(1)).0, Online);
    // The phone repeating itself changes nothing (no ping-pong, synapse#16057).
    let started = e.sync_started(alice(), "PHONE", Some(DeviceState::Unavailable), at(2));
    assert!(started.change.is_none());
    assert_eq!(seen(&e, at(2)).0, Online);
}

#[test]
fn row_07_busy_beats_online() {
    let mut e = engine();
    poll(&mut e, "LAPTOP", None, at(0));
    poll(&mut e, "PHONE", Some(DeviceState::Busy), at(1));
    assert_eq!(seen(&e, at(1)).0, Busy);
}

#[test]
fn row_08_plain_sync_keeps_busy_of_same_device() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Busy), at(0));
    let started = e.sync_started(alice(), "A", None, at(1));
    assert!(started.change.is_none());
    assert_eq!(seen(&e, at(1)).0, Busy);
}

#[test]
fn row_09_plain_sync_keeps_manual_state_of_same_device() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    e.set_status(alice(), "A", DeviceState::Unavailable, None, at(1))
        .unwrap();
    for i in 2..10 {
        assert!(
            e.sync_started(alice(), "A", None, at(i * SEC))
                .change
                .is_none()
        );
    }
    assert_eq!(seen(&e, at(10 * SEC)).0, Unavailable);
}

#[test]
fn row_10_explicit_signal_agreeing_with_manual_state_keeps_it() {
    let mut e = engine();
    e.set_status(alice(), "A", DeviceState::Unavailable, None, at(0));
    poll(&mut e, "A", Some(DeviceState::Unavailable), at(1));
    // The plain sync would say "online", but the manual state still holds.
    poll(&mut e, "A", None, at(2));
    assert_eq!(seen(&e, at(2)).0, Unavailable);
}

#[test]
fn row_11_explicit_signal_contradicting_manual_state_ends_it() {
    let mut e = engine();
    // Complement TestPresence: PUT online, then /sync?set_presence=unavailable.
    e.set_status(alice(), "A", DeviceState::Online, msg("here"), at(0));
    poll(&mut e, "A", Some(DeviceState::Unavailable), at(1));
    assert_eq!(seen(&e, at(1)), (Unavailable, Some("here".into()), false));
    // ...and the other way round, from manual offline.
    e.set_status(alice(), "A", DeviceState::Offline, None, at(2));
    assert_eq!(seen(&e, at(2)).0, Offline);
    poll(&mut e, "A", Some(DeviceState::Online), at(3));
    assert_eq!(seen(&e, at(3)).0, Online);
}

#[test]
fn row_12_manual_busy_ignores_automatic_signals() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Online), at(0));
    e.set_status(alice(), "A", DeviceState::Busy, None, at(1));
    poll(&mut e, "A", Some(DeviceState::Unavailable), at(2));
    poll(&mut e, "A", Some(DeviceState::Online), at(3));
    poll(&mut e, "A", None, at(4));
    assert_eq!(seen(&e, at(4)).0, Busy);
    // Only a new manual state from the same device ends it.
    e.set_status(alice(), "A", DeviceState::Online, None, at(5));
    assert_eq!(seen(&e, at(5)).0, Online);
}

#[test]
fn row_13_most_recent_status_msg_wins() {
    let mut e = engine();
    e.set_status(alice(), "A", DeviceState::Online, msg("at my desk"), at(0));
    e.set_status(
        alice(),
        "B",
        DeviceState::Unavailable,
        msg("on the train"),
        at(1),
    );
    assert_eq!(seen(&e, at(1)), (Online, Some("on the train".into()), true));
}

#[test]
fn row_14_status_update_without_message_clears_it() {
    let mut e = engine();
    e.set_status(alice(), "A", DeviceState::Online, msg("lunch"), at(0));
    let change = e
        .set_status(alice(), "A", DeviceState::Online, None, at(1))
        .unwrap();
    assert_eq!(change.previous.status_msg, msg("lunch"));
    assert_eq!(seen(&e, at(1)), (Online, None, true));
}

#[test]
fn row_15_status_msg_survives_going_offline() {
    let mut e = engine();
    e.set_status(
        alice(),
        "A",
        DeviceState::Online,
        msg("gone fishing"),
        at(0),
    );
    let changes = e.advance(at(30 * SEC));
    assert_eq!(changes.len(), 1);
    assert_eq!(
        seen(&e, at(30 * SEC)),
        (Offline, Some("gone fishing".into()), false)
    );
}

#[test]
fn row_16_device_drops_out_after_sync_online_timeout() {
    let mut e = engine();
    let ticket = hold(&mut e, "A", None, at(0));
    assert!(e.sync_ended(ticket, at(20 * SEC)).is_none());
    assert!(e.advance(at(49_999)).is_empty());
    assert_eq!(seen(&e, at(49_999)).0, Online);
    let changes = e.advance(at(50 * SEC));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].current.state, Offline);
}

#[test]
fn row_17_sync_in_flight_never_drops_out() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    let mut now = at(0);
    while let Some(deadline) = e.next_deadline() {
        now = deadline;
        e.advance(now);
    }
    assert!(now <= at(5 * MIN), "no timer after idle");
    assert_eq!(
        seen(&e, at(2 * HOUR)).0,
        Unavailable,
        "idle, but still connected"
    );
}

#[test]
fn row_18_online_idle_becomes_unavailable() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    assert!(
        e.advance(at(5 * MIN - 1))
            .iter()
            .all(|c| c.current.state == Online)
    );
    let changes = e.advance(at(5 * MIN));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].current.state, Unavailable);
}

#[test]
fn row_19_activity_restores_online() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    e.advance(at(10 * MIN));
    assert_eq!(seen(&e, at(10 * MIN)).0, Unavailable);
    let change = e.activity(alice(), "A", at(10 * MIN)).unwrap();
    assert_eq!(change.current.state, Online);
    assert_eq!(seen(&e, at(10 * MIN)), (Online, None, true));
}

#[test]
fn row_20_currently_active_expires_after_granularity() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    assert_eq!(e.next_deadline(), Some(at(MIN)));
    let changes = e.advance(at(MIN));
    assert_eq!(changes.len(), 1);
    assert_eq!(seen(&e, at(MIN)), (Online, None, false));
}

#[test]
fn row_21_busy_never_idles() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", Some(DeviceState::Busy), at(0));
    e.advance(at(2 * HOUR));
    assert_eq!(seen(&e, at(2 * HOUR)), (Busy, None, false));
}

#[test]
fn row_22_busy_without_sync_ends_after_busy_timeout() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Busy), at(0));
    e.advance(at(HOUR - 1));
    assert_eq!(seen(&e, at(HOUR - 1)).0, Busy);
    let changes = e.advance(at(HOUR));
    assert_eq!(changes.last().unwrap().current.state, Offline);
}

#[test]
fn row_23_override_wins() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", Some(DeviceState::Busy), at(0));
    e.set_status(alice(), "A", DeviceState::Busy, msg("in a call"), at(0));
    let ov = PresenceOverride {
        state: Unavailable,
        status_msg: msg("brb"),
    };
    let change = e.set_override(alice(), Some(ov.clone()), at(1)).unwrap();
    assert!(change.current.overridden);
    assert_eq!(seen(&e, at(1)), (Unavailable, Some("brb".into()), false));
    assert_eq!(e.get_override(alice()), Some(&ov));
    // Activity is hidden under an override.
    assert_eq!(e.current(alice(), at(1)).last_active_ts, None);
}

#[test]
fn row_24_override_without_message_hides_manual_message() {
    let mut e = engine();
    e.set_status(alice(), "A", DeviceState::Online, msg("lunch"), at(0));
    e.set_override(alice(), Some(PresenceOverride::state(Online)), at(1));
    assert_eq!(seen(&e, at(1)), (Online, None, false));
}

#[test]
fn row_25_timers_never_move_an_override() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    e.set_override(alice(), Some(PresenceOverride::state(Online)), at(1));
    assert_eq!(e.next_deadline(), None);
    assert!(e.advance(at(24 * HOUR)).is_empty());
    assert!(e.activity(alice(), "A", at(24 * HOUR)).is_none());
    assert_eq!(seen(&e, at(24 * HOUR)), (Online, None, false));
}

#[test]
fn row_26_clearing_the_override_restores_device_presence() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    e.set_status(alice(), "A", DeviceState::Online, msg("hi"), at(0));
    e.set_override(alice(), Some(PresenceOverride::state(Offline)), at(1));
    let change = e.set_override(alice(), None, at(2)).unwrap();
    assert!(!change.current.overridden);
    assert_eq!(seen(&e, at(2)), (Online, Some("hi".into()), true));
    assert!(e.next_deadline().is_some(), "timers re-armed");
}

#[test]
fn row_27_disabled_override_is_offline_for_legacy_viewers() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    e.set_status(alice(), "A", DeviceState::Online, msg("hi"), at(0));
    let ov = PresenceOverride {
        state: Disabled,
        status_msg: msg("ignored"),
    };
    e.set_override(alice(), Some(ov), at(1));
    assert_eq!(seen(&e, at(1)), (Disabled, None, false));
    let p = e.current(alice(), at(2));
    let legacy = p.content(at(2), Audience::LegacyClient);
    assert_eq!(legacy.presence, Offline);
    assert_eq!(
        (
            legacy.status_msg,
            legacy.last_active_ago,
            legacy.currently_active
        ),
        (None, None, None)
    );
    assert_eq!(p.content(at(2), Audience::Msc4042Client).presence, Disabled);
    assert_eq!(p.federation(at(2)).presence, Offline);
}

#[test]
fn row_28_status_update_without_sync_is_online_until_timeout() {
    let mut e = engine();
    let change = e
        .set_status(alice(), "A", DeviceState::Online, msg("hello"), at(0))
        .unwrap();
    assert_eq!(change.current.state, Online);
    assert_eq!(e.advance(at(30 * SEC))[0].current.state, Offline);
}

#[test]
fn row_29_manual_offline_loses_to_another_online_device() {
    let mut e = engine();
    poll(&mut e, "LAPTOP", None, at(0));
    e.set_status(alice(), "PHONE", DeviceState::Offline, None, at(1));
    assert_eq!(seen(&e, at(1)).0, Online);
}

#[test]
fn row_30_removing_a_device_ends_its_manual_state() {
    let mut e = engine();
    poll(&mut e, "LAPTOP", None, at(0));
    e.set_status(alice(), "PHONE", DeviceState::Busy, None, at(1));
    assert_eq!(seen(&e, at(1)).0, Busy);
    let change = e.device_removed(alice(), "PHONE", at(2)).unwrap();
    assert_eq!(change.current.state, Online);
}

#[test]
fn row_31_activity_from_an_unknown_device_is_online() {
    let mut e = engine();
    let change = e.activity(alice(), "BOT", at(0)).unwrap();
    assert_eq!(change.current.state, Online);
    assert!(change.current.currently_active);
    assert_eq!(e.advance(at(30 * SEC))[0].current.state, Offline);
}

#[test]
fn row_32_explicit_online_after_unavailable_is_activity() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Unavailable), at(0));
    poll(&mut e, "A", Some(DeviceState::Online), at(10 * SEC));
    assert_eq!(seen(&e, at(10 * SEC)), (Online, None, true));
    assert_eq!(
        e.current(alice(), at(10 * SEC)).last_active_ts,
        Some(at(10 * SEC))
    );
}

#[test]
fn row_33_plain_sync_after_unavailable_signal_is_online() {
    let mut e = engine();
    poll(&mut e, "A", Some(DeviceState::Unavailable), at(0));
    poll(&mut e, "A", None, at(SEC));
    assert_eq!(seen(&e, at(SEC)), (Online, None, true));
}

#[test]
fn row_34_repeated_sync_is_not_activity() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    for i in 1..=20 {
        poll(&mut e, "A", None, at(i * 15 * SEC));
        e.advance(at(i * 15 * SEC));
    }
    // 5 minutes of syncing without activity: idle.
    assert_eq!(seen(&e, at(300 * SEC)), (Unavailable, None, false));
}

#[test]
fn row_35_restart_keeps_presence_without_flapping() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    e.set_status(alice(), "A", DeviceState::Online, msg("hi"), at(SEC));
    e.set_override(alice(), None, at(SEC));
    let snapshot = e.snapshot(alice()).unwrap();
    let json = serde_json::to_string(&snapshot).unwrap();

    let mut restarted = engine();
    let back: PresenceSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snapshot);
    // 20 s of downtime: nothing visible changed, so nothing is emitted.
    assert!(restarted.restore(alice(), back, at(21 * SEC)).is_none());
    assert_eq!(
        seen(&restarted, at(21 * SEC)),
        (Online, Some("hi".into()), true)
    );
    // The client reconnects within the grace period: still no flap.
    assert!(
        restarted
            .sync_started(alice(), "A", None, at(25 * SEC))
            .change
            .is_none()
    );
}

#[test]
fn row_36_restart_after_long_downtime_reports_what_changed() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    e.set_override(alice(), Some(PresenceOverride::state(Busy)), at(SEC));
    let snapshot = e.snapshot(alice()).unwrap();
    let mut restarted = engine();
    // The override survives; nothing to report.
    assert!(
        restarted
            .restore(alice(), snapshot.clone(), at(HOUR))
            .is_none()
    );
    assert_eq!(seen(&restarted, at(HOUR)).0, Busy);

    let mut snapshot = snapshot;
    snapshot.presence_override = None;
    snapshot.published = EffectivePresence {
        state: Online,
        currently_active: true,
        last_active_ts: Some(at(0)),
        overridden: false,
        status_msg: None,
        since_ts: at(0),
    };
    // Without the override she was online; after an hour away she is idle, then gone.
    let change = restarted.restore(alice(), snapshot, at(HOUR)).unwrap();
    assert_eq!(change.current.state, Unavailable);
    let changes = restarted.advance(at(HOUR + 30 * SEC));
    assert_eq!(changes[0].current.state, Offline);
}

// ---- edge triggering --------------------------------------------------------------------

#[test]
fn repeated_plain_sync_changes_nothing() {
    let mut e = engine();
    let first = e.sync_started(alice(), "A", None, at(0));
    assert!(first.change.is_some());
    let second = e.sync_started(alice(), "A", None, at(SEC));
    assert!(second.change.is_none());
    assert!(e.sync_ended(first.ticket.unwrap(), at(2 * SEC)).is_none());
    assert!(e.sync_ended(second.ticket.unwrap(), at(3 * SEC)).is_none());
}

#[test]
fn activity_while_currently_active_changes_nothing() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    assert!(e.activity(alice(), "A", at(10 * SEC)).is_none());
    // ...but it extends currently_active by another granularity.
    assert!(e.advance(at(MIN)).is_empty());
    assert_eq!(e.next_deadline(), Some(at(70 * SEC)));
    let changes = e.advance(at(70 * SEC));
    assert_eq!(changes.len(), 1);
    assert!(!changes[0].current.currently_active);
}

#[test]
fn activity_alone_is_not_visible_when_away() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", None, at(0));
    e.set_status(alice(), "A", DeviceState::Unavailable, None, at(0));
    assert!(e.activity(alice(), "A", at(10 * SEC)).is_none());
    assert_eq!(
        e.current(alice(), at(10 * SEC)).last_active_ts,
        Some(at(10 * SEC))
    );
}

#[test]
fn setting_the_same_override_twice_changes_nothing() {
    let mut e = engine();
    let ov = PresenceOverride::state(Unavailable);
    assert!(e.set_override(alice(), Some(ov.clone()), at(0)).is_some());
    assert!(e.set_override(alice(), Some(ov), at(SEC)).is_none());
    assert_eq!(e.current(alice(), at(SEC)).since_ts, at(0));
}

#[test]
fn clearing_an_absent_override_leaves_no_trace() {
    let mut e = engine();
    assert!(e.set_override(alice(), None, at(0)).is_none());
    assert_eq!(e.user_count(), 0);
    assert_eq!(e.snapshot(alice()), None);
}

// ---- tickets, clock, housekeeping -------------------------------------------------------

#[test]
fn stale_ticket_does_not_touch_a_new_device_incarnation() {
    let mut e = engine();
    let old = hold(&mut e, "A", None, at(0));
    e.device_removed(alice(), "A", at(1));
    let _new = hold(&mut e, "A", None, at(2));
    assert!(e.sync_ended(old, at(3)).is_none());
    // The new long-poll is still in flight: no drop-out deadline for it.
    e.advance(at(HOUR));
    assert_eq!(seen(&e, at(HOUR)).0, Unavailable);
}

#[test]
fn clock_going_backwards_is_ignored() {
    let mut e = engine();
    poll(&mut e, "A", None, at(MIN));
    e.advance(at(2 * MIN));
    assert_eq!(seen(&e, at(2 * MIN)).0, Offline);
    // A wall clock stepping back does not resurrect the device.
    assert_eq!(seen(&e, at(0)).0, Offline);
    assert!(e.advance(at(0)).is_empty());
}

#[test]
fn expired_users_are_forgotten_unless_they_have_history() {
    let mut e = engine();
    e.set_status(alice(), "A", DeviceState::Unavailable, None, at(0));
    e.advance(at(HOUR));
    assert_eq!(e.user_count(), 0, "nothing worth remembering");
    poll(&mut e, "A", None, at(HOUR));
    e.advance(at(2 * HOUR));
    assert_eq!(e.user_count(), 1, "last_active_ts is history");
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn dirty_users_are_reported_once() {
    let mut e = engine();
    poll(&mut e, "A", None, at(0));
    assert_eq!(e.take_dirty(), vec![alice().to_owned()]);
    assert!(e.take_dirty().is_empty());
}

#[test]
fn remove_user_sends_a_final_offline() {
    let mut e = engine();
    e.set_status(alice(), "A", DeviceState::Online, msg("bye"), at(0));
    let change = e.remove_user(alice(), at(1)).unwrap();
    assert_eq!(change.current.state, Offline);
    assert_eq!(change.current.status_msg, None);
    assert_eq!(e.user_count(), 0);
    assert_eq!(e.next_deadline(), None);
    assert!(e.remove_user(alice(), at(2)).is_none());
}

#[test]
fn one_timer_per_user() {
    let mut e = engine();
    for i in 0..100 {
        let user = UserId::parse(format!("@u{i}:example.org")).unwrap();
        let _a = e.sync_started(&user, "A", None, at(i)).ticket.unwrap();
        let _b = e
            .sync_started(&user, "B", Some(DeviceState::Busy), at(i))
            .ticket
            .unwrap();
    }
    assert_eq!(e.timers.len(), 100);
}

#[test]
fn snapshot_json_shape_is_stable() {
    let mut e = engine();
    let _ticket = hold(&mut e, "A", Some(DeviceState::Busy), at(0));
    e.set_status(alice(), "A", DeviceState::Unavailable, msg("away"), at(0));
    e.set_override(alice(), Some(PresenceOverride::state(Online)), at(SEC));
    let json = serde_json::to_value(e.snapshot(alice()).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "presence_override": {"state": "online", "set_at": at(SEC)},
            "status_msg": "away",
            "last_active_ts": at(0),
            "devices": {"A": {"automatic": "org.matrix.msc3026.busy", "manual": "unavailable", "last_seen_ts": at(0)}},
            "published": {
                "state": "online", "status_msg": null, "currently_active": false,
                "last_active_ts": null, "overridden": true, "since_ts": at(SEC)
            }
        })
    );
}
