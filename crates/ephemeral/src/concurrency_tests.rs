//! Typing and receipts changed from many threads at once. The positioned write runs its
//! closure outside any global lock; these check that the per-key locks keep each
//! read-modify-write whole and report each key's changes in stream order.
use std::sync::{Barrier, Mutex};
use std::thread;

use storage::{Cf, Key};

use super::*;

struct Recorder(Mutex<Vec<EphemeralChange>>);

impl EphemeralObserver for Recorder {
    fn changed(&self, change: &EphemeralChange) {
        // Observers do work (queueing EDUs, waking syncs); a yield here widens the window in
        // which a later change could overtake this one if nothing kept them in order.
        thread::yield_now();
        self.0.lock().expect("lock").push(change.clone());
    }
}

fn setup() -> (tempfile::TempDir, Arc<EphemeralService>, Arc<Recorder>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("db"));
    let svc = EphemeralService::new(db);
    let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
    svc.add_observer(rec.clone());
    (dir, svc, rec)
}

const THREADS: u64 = 8;
const EACH: u64 = 100;

#[test]
fn concurrent_receipts_of_one_kind_keep_the_latest_and_report_in_order() {
    let (_d, svc, rec) = setup();
    let room: OwnedRoomId = "!r:x".try_into().expect("room");
    let user: OwnedUserId = "@a:x".try_into().expect("user");
    let start = Barrier::new(THREADS as usize);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (svc, room, user, start) = (&svc, &room, &user, &start);
            s.spawn(move || {
                start.wait();
                // Thread t reads events t+1, t+1+THREADS, ...: the threads' receipts
                // interleave, and each thread's own ones move forwards.
                for i in 0..EACH {
                    let n = i * THREADS + t + 1;
                    let receipt = Receipt {
                        room_id: room.clone(),
                        user_id: user.clone(),
                        receipt_type: ReceiptType::Read,
                        event_id: format!("$e{n}").try_into().expect("event"),
                        thread_id: None,
                        ts: n,
                    };
                    svc.put_receipt(receipt, n, Origin::Local).expect("put");
                }
            });
        }
    });
    let max = THREADS * EACH;
    // The stored receipt is the latest event; no racing writer put an older one back.
    let ev = svc
        .receipt_event(&user, &room, None, svc.db.current_position())
        .expect("read")
        .expect("a receipt");
    assert!(
        ev["content"][format!("$e{max}")]["m.read"]["@a:x"].is_object(),
        "{ev}"
    );
    // One stream entry for the one current receipt: each write dropped its predecessor's.
    let entries = svc
        .db
        .scan_prefix(Cf::ReceiptStream, Key::new().str(room.as_str()))
        .expect("scan");
    assert_eq!(entries.len(), 1);
    // Observers saw the accepted receipts in stream order, each for a later event.
    let seen: Vec<(u64, u64)> = rec
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|c| match c {
            EphemeralChange::Receipt { receipt, pos, .. } => (*pos, receipt.ts),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|s| s.1), Some(max));
}

#[test]
fn concurrent_typing_changes_of_one_user_are_reported_in_stream_order() {
    let (_d, svc, rec) = setup();
    let room: OwnedRoomId = "!r:x".try_into().expect("room");
    let users: Vec<OwnedUserId> = (0..2)
        .map(|u| format!("@u{u}:x").try_into().expect("user"))
        .collect();
    let start = Barrier::new(THREADS as usize);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (svc, room, users, start) = (&svc, &room, &users, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..EACH {
                    // Several threads start and stop the same two users.
                    let user = &users[((t + i) % 2) as usize];
                    let typing = (t * 3 + i) % 2 == 0;
                    svc.set_typing(room, user, typing, Duration::from_secs(60), Origin::Local)
                        .expect("set");
                }
            });
        }
    });
    let seen = rec.0.lock().expect("lock").clone();
    for user in &users {
        let mine: Vec<(u64, bool)> = seen
            .iter()
            .filter_map(|c| match c {
                EphemeralChange::Typing {
                    user: u,
                    typing,
                    pos,
                    ..
                } if u == user => Some((*pos, *typing)),
                _ => None,
            })
            .collect();
        // Reported in stream order, alternating start and stop (each a real change)...
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1),
            "{user}: {mine:?}"
        );
        // ...and the last report is the state now: a federation peer that applied the
        // reports in order agrees with this server.
        let now_typing = svc.typing_users(&room).contains(user);
        assert_eq!(
            mine.last().map(|m| m.1).unwrap_or(false),
            now_typing,
            "{user}"
        );
    }
}
