use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::*;
use crate::Key;

fn open() -> (tempfile::TempDir, Arc<Db>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), false).expect("open");
    (dir, Arc::new(db))
}

fn row(pos: u64) -> Key {
    Key::new().str("row").u64(pos)
}

/// Generous: only reached when a closure is (wrongly) waiting for another's lock.
const DEADLOCK: Duration = Duration::from_secs(20);

#[test]
fn a_closure_blocked_in_one_writer_does_not_hold_up_another_writers_closure() {
    let (_dir, db) = open();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let a = {
        let db = db.clone();
        thread::spawn(move || {
            db.write_with_position::<_, StorageError>(|pos, b| {
                entered_tx.send(pos).expect("send");
                // Blocked (a slow read, say) until the test lets go.
                release_rx.recv().expect("release");
                b.put(Cf::Misc, row(pos), b"a".to_vec());
                Ok(())
            })
        })
    };
    let a_pos = entered.recv_timeout(DEADLOCK).expect("A's closure runs");

    // With the closure under a global lock B's closure could not start until A's finished.
    let (b_ran_tx, b_ran) = mpsc::channel();
    let b = {
        let db = db.clone();
        thread::spawn(move || {
            db.write_with_position::<_, StorageError>(|pos, b| {
                // B's closure reads, as callers' closures do, while A is still in its own.
                let seen = db.get(Cf::Misc, row(pos - 1))?;
                b.put(Cf::Misc, row(pos), b"b".to_vec());
                b_ran_tx.send((pos, seen)).expect("send");
                Ok(())
            })
        })
    };
    let (b_pos, seen) = b_ran
        .recv_timeout(DEADLOCK)
        .expect("B's closure ran to its end while A's closure was blocked");
    assert_eq!(b_pos, a_pos + 1);
    assert_eq!(seen, None, "A has not written yet");
    // Neither position is visible while A's is unwritten: readers never see a gap.
    assert_eq!(db.current_position(), a_pos - 1);
    assert_eq!(db.get(Cf::Misc, row(b_pos)).expect("get"), None);

    release.send(()).expect("release");
    assert_eq!(a.join().expect("A").expect("A writes").0, a_pos);
    assert_eq!(b.join().expect("B").expect("B writes").0, b_pos);
    assert_eq!(db.current_position(), b_pos);
    assert!(db.get(Cf::Misc, row(a_pos)).expect("get").is_some());
    assert!(db.get(Cf::Misc, row(b_pos)).expect("get").is_some());
}

#[test]
fn readers_never_see_a_position_before_every_lower_one_is_written() {
    let (_dir, db) = open();
    const WRITERS: usize = 6;
    const EACH: u64 = 60;
    let start = Arc::new(Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, start) = (db.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for i in 0..EACH {
                    db.write_with_position::<_, StorageError>(|pos, b| {
                        // Vary how long closures take so commits would reorder if they could.
                        if (i + w as u64) % 3 == 0 {
                            thread::yield_now();
                        }
                        if (i * 7 + w as u64) % 11 == 0 {
                            thread::sleep(Duration::from_millis(1));
                        }
                        b.put(Cf::Misc, row(pos), vec![1]);
                        Ok(())
                    })
                    .expect("write");
                }
            })
        })
        .collect();
    start.wait();
    let total = WRITERS as u64 * EACH;
    let mut checked = 0;
    loop {
        let now = db.current_position();
        // Every position up to `now` must already be readable.
        for p in checked + 1..=now {
            assert!(
                db.get(Cf::Misc, row(p)).expect("get").is_some(),
                "position {now} visible but {p} not written"
            );
        }
        checked = now;
        if now == total {
            break;
        }
        thread::yield_now();
    }
    for w in writers {
        w.join().expect("writer");
    }
    assert_eq!(db.current_position(), total);
}

#[test]
fn a_failed_closure_gives_its_position_back_when_uncontended() {
    let (dir, db) = open();
    db.write_with_position::<_, StorageError>(|_, _| Ok(()))
        .expect("write");
    let r = db.write_with_position::<(), StorageError>(|_, _| Err(StorageError::MissingCf("x")));
    assert!(r.is_err());
    assert_eq!(db.current_position(), 1);
    let (pos, ()) = db
        .write_with_position::<_, StorageError>(|_, _| Ok(()))
        .expect("write");
    assert_eq!(pos, 2, "the failed write's position was given back");
    drop(db);
    let db = Db::open(dir.path(), false).expect("reopen");
    assert_eq!(db.current_position(), 2);
}

#[test]
fn a_failed_closure_behind_a_later_writer_is_skipped_durably() {
    let (dir, db) = open();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let a = {
        let db = db.clone();
        thread::spawn(move || {
            db.write_with_position::<(), StorageError>(|pos, _| {
                entered_tx.send(pos).expect("send");
                release_rx.recv().expect("release");
                Err(StorageError::MissingCf("x"))
            })
        })
    };
    let a_pos = entered.recv_timeout(DEADLOCK).expect("A runs");
    let b = {
        let db = db.clone();
        thread::spawn(move || {
            db.write_with_position::<_, StorageError>(|pos, b| {
                b.put(Cf::Misc, row(pos), vec![1]);
                Ok(())
            })
        })
    };
    // B has allocated (A's position can no longer be given back) once the counter moved.
    while db.allocated.load(Ordering::SeqCst) < a_pos + 1 {
        thread::yield_now();
    }
    release.send(()).expect("release");
    assert!(a.join().expect("A").is_err());
    let (b_pos, ()) = b.join().expect("B").expect("B writes");
    assert_eq!(b_pos, a_pos + 1, "B is not held up by A's failure");
    assert_eq!(db.current_position(), b_pos);
    drop(db);
    let db = Db::open(dir.path(), false).expect("reopen");
    assert_eq!(db.current_position(), b_pos);
    let (next, ()) = db
        .write_with_position::<_, StorageError>(|_, _| Ok(()))
        .expect("write");
    assert_eq!(next, b_pos + 1, "no position is handed out twice");
}

#[test]
fn a_panicking_closure_does_not_wedge_later_writers() {
    let (_dir, db) = open();
    let d = db.clone();
    let panicked = thread::spawn(move || {
        let _ = d.write_with_position::<(), StorageError>(|_, _| panic!("closure panics"));
    })
    .join();
    assert!(panicked.is_err());
    let (tx, rx) = mpsc::channel();
    let d = db.clone();
    thread::spawn(move || {
        tx.send(d.write_with_position::<_, StorageError>(|_, _| Ok(())))
            .expect("send");
    });
    let (pos, ()) = rx
        .recv_timeout(DEADLOCK)
        .expect("not wedged")
        .expect("write");
    assert_eq!(pos, 1);
    assert_eq!(db.current_position(), 1);
}
