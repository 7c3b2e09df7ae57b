//! The service against a real database and room engine: counts, receipts, rule edits,
//! notifications, pushers.
use std::sync::Arc;

use ruma::push::{Action, RuleKind};
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;
use storage::Db;

use super::*;
use crate::pushers::{PusherChange, parse_set};

const SERVER: &str = "example.org";

struct Env {
    _dir: tempfile::TempDir,
    rooms: Arc<RoomService>,
    push: PushService,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open"));
    let server: ruma::OwnedServerName = SERVER.try_into().expect("server");
    let rooms = Arc::new(RoomService::new(db.clone(), server.clone()).expect("rooms"));
    let accounts = Arc::new(AccountService::new(
        db.clone(),
        server,
        accounts::PasswordHashing::default(),
    ));
    let push = PushService::new(db, accounts, rooms.clone());
    Env {
        _dir: dir,
        rooms,
        push,
    }
}

fn user(local: &str) -> OwnedUserId {
    OwnedUserId::try_from(format!("@{local}:{SERVER}")).expect("user id")
}

/// A public room of alice's that `others` joined.
fn room(e: &Env, others: &[&OwnedUserId]) -> OwnedRoomId {
    let req = rooms::CreateRoomRequest {
        preset: Some(rooms::Preset::PublicChat),
        ..Default::default()
    };
    let room = e.rooms.create_room(&user("alice"), req).expect("create");
    for u in others {
        e.rooms
            .join(u, room.as_str(), &rooms::MemberProfile::default(), None)
            .expect("join");
    }
    room
}

fn say(e: &Env, room: &OwnedRoomId, content: serde_json::Value) -> rooms::SentEvent {
    e.rooms
        .send_message_event(&user("alice"), room, "m.room.message", content, None)
        .expect("send")
}

fn counts(e: &Env, who: &OwnedUserId, room: &OwnedRoomId) -> (u64, u64) {
    let c = e
        .push
        .unread_counts(who, room, e.rooms.current_position(), false)
        .expect("counts");
    (c.main.notification_count, c.main.highlight_count)
}

#[test]
fn messages_count_mentions_highlight_and_a_receipt_resets() {
    let e = env();
    let (bob, carol) = (user("bob"), user("carol"));
    let room = room(&e, &[&bob, &carol]);
    assert_eq!(counts(&e, &bob, &room), (0, 0), "joins do not notify");
    say(&e, &room, json!({"msgtype": "m.text", "body": "hello"}));
    let mention = say(
        &e,
        &room,
        json!({"msgtype": "m.text", "body": "bob?", "m.mentions": {"user_ids": [bob.as_str()]}}),
    );
    say(&e, &room, json!({"msgtype": "m.notice", "body": "a bot"}));
    assert_eq!(counts(&e, &bob, &room), (2, 1));
    // Evaluated once: asking again gives the same answer.
    assert_eq!(counts(&e, &bob, &room), (2, 1));
    e.push
        .mark_read(&bob, &room, None, &mention.event_id)
        .expect("read");
    assert_eq!(counts(&e, &bob, &room), (0, 0));
    say(&e, &room, json!({"body": "more"}));
    assert_eq!(counts(&e, &bob, &room), (1, 0));
    // Alice's own messages never count for her.
    assert_eq!(counts(&e, &user("alice"), &room), (0, 0));
    // An older receipt does not move the read position back.
    let first = e
        .rooms
        .timeline(&room, None, u64::MAX - 1, 1)
        .expect("tl")
        .0;
    let _ = first;
    e.push
        .mark_read(&bob, &room, None, &mention.event_id)
        .expect("read");
    assert_eq!(counts(&e, &bob, &room), (1, 0));
}

#[test]
fn one_to_one_rooms_and_disabled_rules() {
    let e = env();
    let bob = user("bob");
    let room = room(&e, &[&bob]);
    say(&e, &room, json!({"body": "psst"}));
    assert_eq!(counts(&e, &bob, &room), (1, 0));
    // Turning the one-to-one and message rules off silences what follows.
    e.push
        .edit_rules(&bob, |r| {
            for id in [".m.rule.room_one_to_one", ".m.rule.message"] {
                r.set_enabled(RuleKind::Underride, id, false)
                    .map_err(|_| PushError::NotFound(id.into()))?;
            }
            Ok(())
        })
        .expect("edit");
    say(&e, &room, json!({"body": "again"}));
    assert_eq!(counts(&e, &bob, &room), (1, 0));
    // A room rule that notifies wins over the underrides.
    e.push
        .edit_rules(&bob, |r| {
            let rule = rules::new_rule(
                &RuleKind::Room,
                room.as_str(),
                &json!({"actions": ["notify"]}),
            )?;
            r.insert(rule, None, None).map_err(rules::insert_error)
        })
        .expect("edit");
    say(&e, &room, json!({"body": "third"}));
    assert_eq!(counts(&e, &bob, &room), (2, 0));
}

#[test]
fn threads_split_when_asked_and_threaded_receipts_only_clear_their_thread() {
    let e = env();
    let bob = user("bob");
    let room = room(&e, &[&bob, &user("carol")]);
    let root = say(&e, &room, json!({"body": "root"}));
    let in_thread = json!({"body": "reply", "m.relates_to": {"rel_type": "m.thread", "event_id": root.event_id.as_str()}});
    let reply = say(&e, &room, in_thread.clone());
    say(&e, &room, in_thread);
    let now = e.rooms.current_position();
    let split = e
        .push
        .unread_counts(&bob, &room, now, true)
        .expect("counts");
    assert_eq!(split.main.notification_count, 1);
    assert_eq!(split.threads[root.event_id.as_str()].notification_count, 2);
    e.push
        .mark_read(&bob, &room, Some(root.event_id.as_str()), &reply.event_id)
        .expect("read");
    let split = e
        .push
        .unread_counts(&bob, &room, now, true)
        .expect("counts");
    assert_eq!(split.main.notification_count, 1, "main untouched");
    assert_eq!(split.threads[root.event_id.as_str()].notification_count, 1);
    e.push
        .mark_read(&bob, &room, Some("main"), &root.event_id)
        .expect("read");
    let all = e
        .push
        .unread_counts(&bob, &room, now, false)
        .expect("counts");
    assert_eq!(
        all.main.notification_count, 1,
        "the last thread reply is left"
    );
}

#[test]
fn notifications_list_newest_first_with_read_flags_and_pages() {
    let e = env();
    let bob = user("bob");
    let room = room(&e, &[&bob, &user("carol")]);
    let first = say(&e, &room, json!({"body": "one"}));
    say(
        &e,
        &room,
        json!({"body": "two", "m.mentions": {"user_ids": [bob.as_str()]}}),
    );
    say(&e, &room, json!({"body": "three"}));
    e.push
        .mark_read(&bob, &room, None, &first.event_id)
        .expect("read");
    let now = e.rooms.current_position();
    let (all, next) = e
        .push
        .notifications(&bob, None, 2, false, now)
        .expect("list");
    assert_eq!(all.len(), 2);
    assert!(all[0].pos > all[1].pos);
    let (rest, end) = e
        .push
        .notifications(&bob, next, 2, false, now)
        .expect("page 2");
    assert_eq!(rest.len(), 1);
    assert_eq!(end, None);
    assert_eq!(rest[0].record.event_id, first.event_id);
    assert!(rest[0].read && !all[0].read);
    let (hl, _) = e
        .push
        .notifications(&bob, None, 10, true, now)
        .expect("highlights");
    assert_eq!(hl.len(), 1);
    assert!(hl[0].record.actions.iter().any(Action::is_highlight));
}

#[test]
fn stored_rules_are_account_data_and_keep_edits() {
    let e = env();
    let bob = user("bob");
    assert!(e.push.ensure_rules_stored(&bob).expect("store").is_some());
    assert!(
        e.push.ensure_rules_stored(&bob).expect("again").is_none(),
        "stored once"
    );
    e.push
        .edit_rules(&bob, |r| {
            r.set_actions(RuleKind::Override, ".m.rule.master", vec![Action::Notify])
                .map_err(|_| PushError::NotFound("master".into()))
        })
        .expect("edit");
    let rules = e.push.rules(&bob).expect("rules");
    assert!(matches!(
        rules.override_[0].actions.as_slice(),
        [Action::Notify]
    ));
    assert!(rules.override_[0].default, "still a server-default rule");
}

#[test]
fn pushers_are_validated_stored_replaced_and_removed() {
    let e = env();
    let (bob, carol) = (user("bob"), user("carol"));
    let body = json!({
        "pushkey": "key1", "kind": "http", "app_id": "org.example.app",
        "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}
    });
    let set = |who: &OwnedUserId, body: &serde_json::Value, device: &str| {
        e.push
            .change_pusher(who, parse_set(body, device).expect("valid"))
    };
    set(&bob, &body, "DEV1").expect("set");
    assert_eq!(e.push.pushers(&bob).expect("list").len(), 1);
    assert!(
        e.push.pushers(&bob).expect("list")[0]
            .to_json()
            .get("device_id")
            .is_none()
    );
    // Carol sets the same app and key without append: bob's goes.
    set(&carol, &body, "DEV2").expect("set");
    assert!(e.push.pushers(&bob).expect("list").is_empty());
    let mut remove = body.clone();
    remove["kind"] = serde_json::Value::Null;
    set(&carol, &remove, "DEV2").expect("remove");
    assert!(e.push.pushers(&carol).expect("list").is_empty());
    let mut bad = body.clone();
    bad["data"] = json!({"url": "https://push.example.org/wrong"});
    assert!(matches!(
        parse_set(&bad, "D"),
        Err(PushError::InvalidParam(_))
    ));
    let mut missing = body.clone();
    missing.as_object_mut().expect("obj").remove("lang");
    assert!(matches!(
        parse_set(&missing, "D"),
        Err(PushError::MissingParam(_))
    ));
    assert!(matches!(
        parse_set(&json!({"app_id": "a", "pushkey": "k", "kind": null}), "D"),
        Ok(PusherChange::Remove { .. })
    ));
    // A password change keeps only the current device's pushers.
    set(&bob, &body, "DEV1").expect("set");
    let mut other = body.clone();
    other["pushkey"] = json!("key2");
    set(&bob, &other, "DEV9").expect("set");
    assert_eq!(
        e.push
            .remove_pushers_except_device(&bob, "DEV1")
            .expect("rm"),
        1
    );
    assert_eq!(e.push.pushers(&bob).expect("list")[0].pushkey, "key1");
}
