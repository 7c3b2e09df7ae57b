use super::*;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use ruma::{server_name, user_id};
use serde_json::json;

use crate::worker::backoff_delay;

/// A fake remote: records every transaction; fails while `failing` is set.
#[derive(Clone, Default)]
struct Fake {
    state: Arc<FakeState>,
}

#[derive(Default)]
struct FakeState {
    sent: Mutex<Vec<(String, String, Value)>>,
    failing: std::sync::atomic::AtomicBool,
    attempts: AtomicUsize,
}

impl Transport for Fake {
    fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        body: Value,
    ) -> impl Future<Output = Result<Value, TransportError>> + Send {
        let state = self.state.clone();
        let dest = destination.to_string();
        let txn_id = txn_id.to_owned();
        async move {
            state.attempts.fetch_add(1, Ordering::SeqCst);
            // Let other tasks run while "on the wire" (so enqueues can race a transaction).
            tokio::time::sleep(Duration::from_millis(5)).await;
            if state.failing.load(Ordering::SeqCst) {
                return Err(TransportError::Retry("connection refused".into()));
            }
            lock(&state.sent).push((dest, txn_id, body));
            Ok(json!({"pdus": {}}))
        }
    }
}

impl Fake {
    fn sent(&self) -> Vec<(String, String, Value)> {
        lock(&self.state.sent).clone()
    }
    fn fail(&self, on: bool) {
        self.state.failing.store(on, Ordering::SeqCst);
    }
    fn pdus_to(&self, dest: &str) -> Vec<u64> {
        self.sent()
            .iter()
            .filter(|(d, _, _)| d == dest)
            .flat_map(|(_, _, b)| b["pdus"].as_array().cloned().unwrap_or_default())
            .map(|p| p["n"].as_u64().unwrap())
            .collect()
    }
    fn presence_to(&self, dest: &str) -> Vec<Value> {
        self.sent()
            .iter()
            .filter(|(d, _, _)| d == dest)
            .flat_map(|(_, _, b)| b["edus"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["edu_type"] == PRESENCE_EDU)
            .flat_map(|e| e["content"]["push"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

fn open(dir: &tempfile::TempDir) -> Arc<Db> {
    Arc::new(Db::open(dir.path(), false).unwrap())
}

fn config() -> SenderConfig {
    SenderConfig::new(server_name!("home.org").to_owned())
}

/// Waits (in paused time) until `cond` holds.
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held");
}

fn idle<T: Transport>(s: &FederationSender<T>) -> bool {
    s.status().iter().all(|d| !d.worker_active)
}

#[tokio::test(start_paused = true)]
async fn pdus_arrive_in_order_in_transactions_of_at_most_50_with_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let s = FederationSender::start(open(&dir), fake.clone(), config()).unwrap();
    let remote = server_name!("remote.org");
    for n in 0..120u64 {
        s.queue_pdu([remote, server_name!("home.org")], &json!({"n": n}))
            .unwrap();
    }
    until(|| fake.pdus_to("remote.org").len() == 120).await;
    assert_eq!(fake.pdus_to("remote.org"), (0..120).collect::<Vec<_>>());
    let sent = fake.sent();
    assert!(
        sent.iter().all(|(d, _, _)| d == "remote.org"),
        "never to ourselves"
    );
    assert!(
        sent.iter()
            .all(|(_, _, b)| b["pdus"].as_array().unwrap().len() <= 50)
    );
    assert!(sent.iter().all(|(_, _, b)| b["origin"] == "home.org"));
    let ids: BTreeSet<_> = sent.iter().map(|(_, t, _)| t.clone()).collect();
    assert_eq!(ids.len(), sent.len(), "txn ids are unique");
    until(|| idle(&s)).await;
    assert_eq!(s.status()[0].pending_pdus, 0);
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped_at_an_hour() {
    let (base, cap) = (Duration::from_secs(5), Duration::from_secs(3600));
    assert_eq!(backoff_delay(base, cap, 1, 1.0), Duration::from_secs(5));
    assert_eq!(backoff_delay(base, cap, 3, 1.0), Duration::from_secs(20));
    assert_eq!(backoff_delay(base, cap, 3, 0.8), Duration::from_secs(16));
    assert_eq!(backoff_delay(base, cap, 3, 9.0), Duration::from_secs(28));
    assert_eq!(backoff_delay(base, cap, 40, 1.4), cap);
    for f in 1..100 {
        assert!(backoff_delay(base, cap, f, 1.39) <= cap);
        assert!(backoff_delay(base, cap, f + 1, 1.0) >= backoff_delay(base, cap, f, 1.0));
    }
}

#[tokio::test(start_paused = true)]
async fn failing_destination_backs_off_then_delivers_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.fail(true);
    let s = FederationSender::start(open(&dir), fake.clone(), config()).unwrap();
    let remote = server_name!("remote.org");
    s.queue_pdu([remote], &json!({"n": 0})).unwrap();
    until(|| s.status()[0].failures >= 3).await;
    let st = &s.status()[0];
    assert!(st.retry_at_ms.is_some() && st.last_error.is_some());
    assert_eq!(st.pending_pdus, 1);
    for n in 1..5u64 {
        s.queue_pdu([remote], &json!({"n": n})).unwrap();
    }
    // Queued items do not shorten the backoff: attempts stay at the failure cadence.
    let attempts = fake.state.attempts.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.state.attempts.load(Ordering::SeqCst), attempts);
    fake.fail(false);
    until(|| fake.pdus_to("remote.org").len() == 5).await;
    assert_eq!(fake.pdus_to("remote.org"), vec![0, 1, 2, 3, 4]);
    let st = &s.status()[0];
    assert_eq!((st.failures, st.retry_at_ms.is_none()), (0, true));
    assert!(st.last_success_ms.is_some());
}

#[tokio::test(start_paused = true)]
async fn notify_destination_up_ends_the_backoff_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.fail(true);
    let mut cfg = config();
    cfg.backoff_base = Duration::from_secs(3000); // the first retry would be ~1 h away
    let s = FederationSender::start(open(&dir), fake.clone(), cfg).unwrap();
    let remote = server_name!("remote.org");
    s.queue_pdu([remote], &json!({"n": 0})).unwrap();
    until(|| s.status()[0].failures == 1).await;
    fake.fail(false);
    let before = tokio::time::Instant::now();
    s.notify_destination_up(remote);
    until(|| fake.pdus_to("remote.org") == [0]).await;
    assert!(tokio::time::Instant::now() - before < Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn presence_is_sent_at_once_when_idle_and_coalesced_while_backing_off() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let s = FederationSender::start(open(&dir), fake.clone(), config()).unwrap();
    let remote = server_name!("remote.org");
    let (a, b) = (user_id!("@a:home.org"), user_id!("@b:home.org"));
    let entry = |u: &UserId, p: &str| json!({"user_id": u, "presence": p, "last_active_ago": 0});
    s.queue_presence(remote, a, vec![entry(a, "online")])
        .unwrap();
    until(|| fake.presence_to("remote.org").len() == 1).await;
    until(|| idle(&s)).await;

    fake.fail(true);
    s.queue_presence(remote, a, vec![entry(a, "unavailable")])
        .unwrap();
    until(|| s.status()[0].failures >= 1).await;
    s.queue_presence(remote, b, vec![entry(b, "online")])
        .unwrap();
    s.queue_presence(remote, a, vec![entry(a, "offline")])
        .unwrap();
    s.queue_presence(remote, a, vec![entry(a, "online")])
        .unwrap();
    s.queue_edu(remote, None, "m.typing", json!({"room_id": "!r:home.org"}))
        .unwrap();
    assert_eq!(
        s.status()[0].pending_edus,
        3,
        "a's updates replaced each other"
    );
    fake.fail(false);
    until(|| fake.presence_to("remote.org").len() == 3).await;
    let got = fake.presence_to("remote.org");
    // After recovery: one entry per user, the latest; b first (a's latest was queued later).
    assert_eq!(got[1]["user_id"], "@b:home.org");
    assert_eq!(
        (got[2]["user_id"].as_str(), got[2]["presence"].as_str()),
        (Some("@a:home.org"), Some("online"))
    );
    // last_active_ago was aged by the time spent in the queue.
    assert!(got[1]["last_active_ago"].as_u64().unwrap() > 0);
    until(|| idle(&s)).await;
    assert_eq!(s.status()[0].pending_edus, 0);
}

#[test]
fn many_presence_entries_are_merged_into_edus_of_at_most_50() {
    let edus: Vec<Pending<QueuedEdu>> = (0..120)
        .map(|i| Pending {
            seq: i,
            item: QueuedEdu {
                key: Some(format!("m.presence @u{i}:home.org")),
                edu_type: PRESENCE_EDU.into(),
                content: json!([{"user_id": format!("@u{i}:home.org"), "presence": "online", "last_active_ago": 10}]),
                queued_at: 1_000,
            },
        })
        .collect();
    let built = worker::build_edus(&edus, 1_500);
    let sizes: Vec<usize> = built
        .iter()
        .map(|e| e["content"]["push"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(built[0]["content"]["push"][0]["last_active_ago"], 510);
}

use crate::queue::{Pending, QueuedEdu};

#[tokio::test(start_paused = true)]
async fn restart_resumes_from_the_queue_on_disk_with_fresh_txn_ids() {
    let dir = tempfile::tempdir().unwrap();
    let remote = server_name!("remote.org");
    let first_ids: BTreeSet<String>;
    {
        let fake = Fake::default();
        let s = FederationSender::start(open(&dir), fake.clone(), config()).unwrap();
        s.queue_pdu([remote], &json!({"n": 0})).unwrap();
        until(|| idle(&s)).await;
        fake.fail(true);
        for n in 1..4u64 {
            s.queue_pdu([remote], &json!({"n": n})).unwrap();
        }
        s.queue_presence(
            remote,
            user_id!("@a:home.org"),
            vec![json!({"user_id": "@a:home.org", "presence": "online", "last_active_ago": 0})],
        )
        .unwrap();
        until(|| s.status()[0].failures >= 2).await;
        first_ids = fake.sent().iter().map(|(_, t, _)| t.clone()).collect();
        // The sender stops with its queue unsent (its workers exit and release the database).
        s.shutdown();
    }
    tokio::time::sleep(Duration::from_secs(4000)).await;
    let fake = Fake::default();
    let db = reopen(&dir).await;
    let s = FederationSender::start(db, fake.clone(), config()).unwrap();
    until(|| fake.pdus_to("remote.org") == [1, 2, 3]).await;
    assert_eq!(fake.presence_to("remote.org").len(), 1);
    let ids: BTreeSet<String> = fake.sent().iter().map(|(_, t, _)| t.clone()).collect();
    assert!(
        ids.is_disjoint(&first_ids),
        "txn ids never repeat across restarts"
    );
    until(|| idle(&s)).await;
}

/// Opens the database again once the previous owner's tasks have let go of it.
async fn reopen(dir: &tempfile::TempDir) -> Arc<Db> {
    for _ in 0..1000 {
        if let Ok(db) = Db::open(dir.path(), false) {
            return Arc::new(db);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    panic!("database still locked");
}
