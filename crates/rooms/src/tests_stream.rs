//! `Cf::RoomStream`: which rooms changed in a range of stream positions.
use serde_json::json;

use crate::tests::{create, setup, user};
use crate::*;

#[test]
fn rooms_changed_between_names_exactly_the_rooms_with_new_events() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let quiet = create(&svc, &alice, Preset::PrivateChat);
    let busy = create(&svc, &alice, Preset::PrivateChat);
    let since = svc.current_position();
    for i in 0..3 {
        svc.send_message_event(
            &alice,
            &busy,
            "m.room.message",
            json!({"msgtype": "m.text", "body": format!("{i}")}),
            None,
        )
        .expect("send");
    }
    let now = svc.current_position();
    let changed = svc
        .rooms_changed_between(since, now, 10)
        .expect("read")
        .expect("within the limit");
    assert!(changed.contains(&busy));
    assert!(!changed.contains(&quiet));
    assert_eq!(changed.len(), 1);
    // Nothing after `now`; an empty range is empty.
    assert_eq!(
        svc.rooms_changed_between(now, now, 10).expect("read"),
        Some(Default::default())
    );
    // More events than the caller will read: it must look at every room.
    assert_eq!(
        svc.rooms_changed_between(since, now, 2).expect("read"),
        None
    );
    // From the start both rooms changed (their creation events).
    let all = svc
        .rooms_changed_between(0, now, 1000)
        .expect("read")
        .expect("within the limit");
    assert!(all.contains(&quiet) && all.contains(&busy));
}
