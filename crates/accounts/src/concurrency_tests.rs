//! Account data written from many threads at once: the positioned write runs its closure
//! outside any global lock, so these check that the per-user serialisation keeps each
//! read-modify-write whole.
use std::sync::Barrier;
use std::thread;

use serde_json::json;

use super::*;

fn service() -> (tempfile::TempDir, AccountService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open db"));
    let svc = AccountService::new(
        db,
        "example.org".try_into().expect("server name"),
        PasswordHashing::insecure_fast(),
    );
    (dir, svc)
}

/// The user's change-log rows as (pos, type).
fn log_rows(svc: &AccountService, user: &UserId) -> Vec<(u64, String)> {
    svc.db
        .scan_prefix(Cf::AccountDataLog, keys::user_prefix(user))
        .expect("scan")
        .into_iter()
        .map(|(k, v)| {
            let pos = keys::parse_account_data_log(&k).expect("log key");
            let rec: AccountDataLogRecord = serde_json::from_slice(&v).expect("log row");
            (pos, rec.event_type)
        })
        .collect()
}

const THREADS: usize = 8;
const EACH: usize = 40;

#[test]
fn concurrent_writes_of_one_entry_leave_one_log_row_and_the_last_value() {
    let (_d, svc) = service();
    let user: OwnedUserId = "@ada:example.org".try_into().expect("user");
    let start = Barrier::new(THREADS);
    let written: Vec<(u64, usize, usize)> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (svc, user, start) = (&svc, &user, &start);
                s.spawn(move || {
                    start.wait();
                    (0..EACH)
                        .map(|i| {
                            let content = json!({ "thread": t, "i": i });
                            let pos = svc
                                .set_account_data(user, None, "m.shared", &content)
                                .expect("set");
                            (pos, t, i)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer"))
            .collect()
    });
    let &(last_pos, t, i) = written.iter().max().expect("writes");
    // The stored value is the one written at the highest position...
    assert_eq!(
        svc.account_data(&user, None, "m.shared").expect("get"),
        Some(json!({ "thread": t, "i": i }))
    );
    // ...and the change log holds exactly one row for the entry, at that position: every
    // writer dropped the row of the write before it (none read a stale previous entry).
    assert_eq!(
        log_rows(&svc, &user),
        vec![(last_pos, "m.shared".to_owned())]
    );
    let changes = svc
        .account_data_since(&user, 0, svc.db.current_position())
        .expect("since");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].content, json!({ "thread": t, "i": i }));
}

#[test]
fn concurrent_writes_of_many_entries_lose_none() {
    let (_d, svc) = service();
    let user: OwnedUserId = "@bea:example.org".try_into().expect("user");
    let start = Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (svc, user, start) = (&svc, &user, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..EACH {
                    // Each thread rewrites its own few types over and over.
                    let ty = format!("m.t{t}.{}", i % 4);
                    svc.set_account_data(user, None, &ty, &json!({ "i": i }))
                        .expect("set");
                }
            });
        }
    });
    let rows = log_rows(&svc, &user);
    assert_eq!(rows.len(), THREADS * 4, "one log row per entry: {rows:?}");
    for t in 0..THREADS {
        for k in 0..4 {
            let last = (0..EACH).filter(|i| i % 4 == k).max().expect("some i");
            assert_eq!(
                svc.account_data(&user, None, &format!("m.t{t}.{k}"))
                    .expect("get"),
                Some(json!({ "i": last }))
            );
        }
    }
}
