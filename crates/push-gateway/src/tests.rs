use std::sync::Arc;
use std::time::Duration;

use ruma::push::{Action, Tweak};
use storage::{Batch, Db};

use crate::queue::{self, PusherId, Queued};
use crate::{backoff, payload};

fn db() -> (tempfile::TempDir, Arc<Db>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(&dir.path().join("db"), false).expect("open"));
    (dir, db)
}

fn pusher(user: &str, key: &str) -> PusherId {
    PusherId {
        user: user.try_into().expect("user id"),
        app_id: "app".into(),
        pushkey: key.into(),
    }
}

fn push(n: u64) -> Queued {
    Queued {
        room_id: "!r:example.org".try_into().expect("room id"),
        event_id: format!("$e{n}").try_into().expect("event id"),
        attempts: 0,
    }
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(2), Duration::from_secs(2));
    assert_eq!(backoff(5), Duration::from_secs(16));
    assert_eq!(backoff(40), crate::worker::MAX_BACKOFF);
}

#[test]
fn queues_are_per_pusher_in_order_and_survive_reopening() {
    let (dir, db) = db();
    let (a, b, c) = (
        pusher("@a:example.org", "k1"),
        pusher("@a:example.org", "k2"),
        pusher("@b:example.org", "k1"),
    );
    let mut batch = Batch::new();
    for pos in [30, 10, 20] {
        queue::put(&mut batch, &a, pos, &push(pos));
    }
    queue::put(&mut batch, &c, 5, &push(5));
    queue::put_cursor(&mut batch, 30);
    db.write(batch).expect("write");
    drop(db);
    let db = Db::open(&dir.path().join("db"), false).expect("reopen");
    assert_eq!(queue::cursor(&db).expect("cursor"), Some(30));
    let got: Vec<u64> = queue::pending(&db, &a, 10)
        .expect("pending")
        .iter()
        .map(|e| e.pos)
        .collect();
    assert_eq!(got, vec![10, 20, 30]);
    assert!(queue::pending(&db, &b, 10).expect("pending").is_empty());
    assert_eq!(
        queue::pushers_with_pending(&db, 10).expect("pushers"),
        vec![a.clone(), c.clone()]
    );
    assert_eq!(
        queue::pushers_with_pending(&db, 1).expect("pushers"),
        vec![a.clone()]
    );
    queue::remove(&db, &a, 10).expect("remove");
    assert_eq!(queue::pending(&db, &a, 1).expect("pending")[0].pos, 20);
    assert_eq!(queue::clear(&db, &a).expect("clear"), 2);
    assert_eq!(
        queue::pushers_with_pending(&db, 10).expect("pushers"),
        vec![c]
    );
}

#[test]
fn tweaks_come_from_the_set_tweak_actions() {
    let record = push::NotifRecord {
        event_id: "$e:example.org".try_into().expect("event id"),
        highlight: true,
        actions: vec![
            Action::Notify,
            Action::SetTweak(Tweak::Sound("default".into())),
            Action::SetTweak(Tweak::Highlight(true.into())),
        ],
        ts: 0,
        thread: None,
    };
    let t = payload::tweaks(Some(&record));
    assert_eq!(t.get("sound"), Some(&serde_json::json!("default")));
    assert_eq!(t.get("highlight"), Some(&serde_json::json!(true)));
    assert!(payload::tweaks(None).is_empty());
}
