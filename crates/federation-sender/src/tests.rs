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
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
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
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // Let other tasks run while "on the wire" (so enqueues can race a transaction).
            tokio::time::sleep(Duration::from_millis(5)).await;
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
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

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded_over_all_destinations_and_idle_workers_exit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut cfg = config();
    cfg.max_concurrent = 2;
    let s = FederationSender::start(open(&dir), fake.clone(), cfg).unwrap();
    let dests: Vec<OwnedServerName> = (0..10)
        .map(|i| OwnedServerName::try_from(format!("d{i}.org")).unwrap())
        .collect();
    for n in 0..3u64 {
        s.queue_pdu(dests.iter().map(|d| &**d), &json!({"n": n}))
            .unwrap();
    }
    until(|| dests.iter().all(|d| fake.pdus_to(d.as_str()).len() == 3)).await;
    until(|| idle(&s)).await;
    assert_eq!(fake.state.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(s.status().len(), 10);
    assert!(
        s.status()
            .iter()
            .all(|d| d.pending_pdus == 0 && d.last_success_ms.is_some())
    );
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

#[test]
fn a_transaction_never_exceeds_100_edus_after_merging_presence() {
    let item = |i: u64, ty: &str, entries: usize| Pending {
        seq: i,
        item: QueuedEdu {
            key: None,
            edu_type: ty.into(),
            content: if ty == PRESENCE_EDU {
                json!(vec![
                    json!({"user_id": "@u:home.org", "presence": "online"});
                    entries
                ])
            } else {
                json!({})
            },
            queued_at: 0,
        },
    };
    // 90 typing EDUs, then presence items of 30 entries each: 90 + ceil(30k/50) <= 100.
    let mut edus: Vec<_> = (0..90).map(|i| item(i, "m.typing", 0)).collect();
    edus.extend((90..120).map(|i| item(i, PRESENCE_EDU, 30)));
    let n = worker::edus_that_fit(&edus);
    assert_eq!(n, 90 + 16); // 16 × 30 = 480 entries = 10 EDUs; the 17th would make 11
    let n = n.min(edus.len());
    assert!(worker::build_edus(&edus[..n], 0).len() <= MAX_EDUS_PER_TXN);
    assert_eq!(worker::edus_that_fit(&[item(0, PRESENCE_EDU, 10_000)]), 1);
}

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

#[tokio::test(start_paused = true)]
async fn pdu_outbox_never_queues_a_position_twice_and_its_cursor_lags_one_tick() {
    use crate::pdu_out::PduOutbox;
    let dir = tempfile::tempdir().unwrap();
    let remote = server_name!("remote.org");
    let db = open(&dir);
    let bump = |db: &Db| {
        db.write_with_position::<_, StorageError>(|_, _| Ok(()))
            .unwrap()
            .0
    };
    let fake = Fake::default();
    let s = FederationSender::start(db.clone(), fake.clone(), config()).unwrap();
    let out = PduOutbox::open(s.clone()).unwrap();
    assert_eq!(out.cursor(), 0);
    let (p1, p2) = (bump(&db), bump(&db));
    // Rooms commit in parallel: p2 may be handed over before p1.
    out.event(p2, [remote], &json!({"n": 2})).unwrap();
    out.event(p1, [remote, server_name!("home.org")], &json!({"n": 1}))
        .unwrap();
    // A replay of positions already queued queues nothing.
    out.event(p2, [remote], &json!({"n": 2})).unwrap();
    until(|| fake.pdus_to("remote.org").len() == 2).await;
    assert_eq!(fake.pdus_to("remote.org"), [2, 1]);
    // The first call only samples; the second stores what the first sampled.
    out.persist_cursor(None).unwrap();
    assert_eq!(out.cursor(), 0);
    let p3 = bump(&db);
    out.persist_cursor(None).unwrap();
    assert_eq!(
        out.cursor(),
        p2,
        "not p3: it was committed after the sample"
    );
    out.event(p1, [remote], &json!({"n": 1})).unwrap();
    out.persist_cursor(Some(p3)).unwrap();
    assert_eq!(out.cursor(), p3);
    until(|| idle(&s)).await;
    assert_eq!(fake.pdus_to("remote.org"), [2, 1], "nothing queued twice");
    s.shutdown();
    drop((out, s, db));
    let db = reopen(&dir).await;
    let s = FederationSender::start(db, Fake::default(), config()).unwrap();
    assert_eq!(PduOutbox::open(s).unwrap().cursor(), p3);
}

/// Enqueues from several threads race the worker's reads and acknowledgements (which move
/// its read floor): every PDU and EDU still arrives, each thread's PDUs in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_while_transactions_fly_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let s = FederationSender::start(open(&dir), fake.clone(), config()).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let remote = server_name!("remote.org");
                for i in 0..50u64 {
                    s.queue_pdu([remote], &json!({"n": t * 1000 + i})).unwrap();
                    s.queue_edu(
                        remote,
                        Some(format!("m.typing {t} {i}")),
                        "m.typing",
                        json!({"t": t, "i": i}),
                    )
                    .unwrap();
                    if i % 7 == 0 {
                        std::thread::sleep(Duration::from_millis(3));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let typing = || {
        fake.sent()
            .iter()
            .flat_map(|(_, _, b)| b["edus"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["edu_type"] == "m.typing")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (fake.pdus_to("remote.org").len() < 200 || typing() < 200)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pdus = fake.pdus_to("remote.org");
    assert_eq!(pdus.len(), 200, "every PDU arrives once");
    assert_eq!(typing(), 200, "every EDU (distinct keys) arrives once");
    for t in 0..4u64 {
        let mine: Vec<u64> = pdus.iter().copied().filter(|n| n / 1000 == t).collect();
        assert_eq!(mine, (0..50).map(|i| t * 1000 + i).collect::<Vec<_>>());
    }
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

mod presence_out_tests {
    use super::*;
    use crate::presence_out::{PRESENCE_REFRESH_MS, PeerTrust, PresenceOutbox, presence_entries};
    use presence_core::routing::{PresenceRouting, RouteKind};
    use presence_core::{FederationPresence, PresenceState};

    fn online() -> FederationPresence {
        FederationPresence {
            presence: PresenceState::Online,
            status_msg: Some("hi".into()),
            last_active_ago: 0,
            currently_active: true,
        }
    }

    fn routing(entries: &[(&str, Option<&[&str]>)]) -> PresenceRouting {
        let mut r = PresenceRouting::default();
        for (server, recipients) in entries {
            let server = OwnedServerName::try_from(*server).unwrap();
            // Unrestricted: the server's room sharers (one per server here).
            let sharer = format!("@v:{server}");
            let viewers: BTreeSet<ruma::OwnedUserId> = recipients
                .unwrap_or(&[sharer.as_str()])
                .iter()
                .map(|u| ruma::OwnedUserId::try_from(*u).unwrap())
                .collect();
            let kind = match recipients {
                None => RouteKind::Unrestricted,
                Some(r) => RouteKind::Restricted(vec![r.iter().map(|s| s.to_string()).collect()]),
            };
            r.destinations.insert(server.clone(), kind);
            r.viewers.insert(server, viewers);
        }
        r
    }

    #[test]
    fn entries_carry_allowed_recipients_only_when_restricted() {
        let u = user_id!("@a:home.org");
        let e = presence_entries(u, &online(), &RouteKind::Unrestricted);
        assert_eq!(e.len(), 1);
        assert!(e[0].get("allowed_recipients").is_none());
        assert_eq!(e[0]["user_id"], "@a:home.org");
        let chunks = RouteKind::Restricted(vec![vec!["@x:r.org".into()], vec!["@y:r.org".into()]]);
        let e = presence_entries(u, &online(), &chunks);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1]["allowed_recipients"], json!(["@y:r.org"]));
    }

    #[tokio::test(start_paused = true)]
    async fn revocation_sends_final_offline_to_who_lost_sight_and_refresh_is_due_after_20_min() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let s = FederationSender::start(open(&dir), fake.clone(), config()).unwrap();
        let trust = PeerTrust::new([OwnedServerName::try_from("one.org").unwrap()]);
        let outbox = PresenceOutbox::new(s.clone(), trust);
        let u = user_id!("@a:home.org");
        outbox
            .presence_changed(
                u,
                &online(),
                routing(&[
                    ("one.org", Some(&["@x:one.org", "@y:one.org"])),
                    ("two.org", None),
                ]),
                0,
            )
            .unwrap();
        until(|| fake.presence_to("one.org").len() == 1 && fake.presence_to("two.org").len() == 1)
            .await;
        // @y loses sight; two.org drops out entirely.
        outbox
            .routing_changed(
                u,
                &online(),
                routing(&[("one.org", Some(&["@x:one.org"]))]),
                1,
            )
            .unwrap();
        until(|| fake.presence_to("one.org").len() == 2 && fake.presence_to("two.org").len() == 2)
            .await;
        let one = fake.presence_to("one.org");
        assert_eq!(
            (one[1]["presence"].as_str(), &one[1]["allowed_recipients"]),
            (Some("offline"), &json!(["@y:one.org"]))
        );
        let two = fake.presence_to("two.org");
        assert_eq!(two[1]["presence"], "offline");
        assert!(two[1].get("allowed_recipients").is_none());
        // A new server gains a viewer: it gets the current presence; one.org gets nothing new.
        outbox
            .routing_changed(
                u,
                &online(),
                routing(&[("one.org", Some(&["@x:one.org"])), ("three.org", None)]),
                2,
            )
            .unwrap();
        until(|| fake.presence_to("three.org").len() == 1).await;
        until(|| idle(&s)).await;
        assert_eq!(fake.presence_to("one.org").len(), 2);
        assert_eq!(fake.presence_to("three.org")[0]["presence"], "online");
        assert!(outbox.due_for_refresh(PRESENCE_REFRESH_MS).is_empty());
        assert_eq!(
            outbox.due_for_refresh(PRESENCE_REFRESH_MS + 2),
            vec![u.to_owned()]
        );
    }
}

mod bridge_tests {
    use super::*;
    use crate::bridge::PresenceBridge;
    use crate::presence_out::PeerTrust;
    use presence_service::{PresenceService, PresenceServiceConfig, SyncWaker};

    struct NoWake;
    impl SyncWaker for NoWake {
        fn wake_users(&self, _: &[&UserId], _: u64) {}
    }

    #[tokio::test]
    async fn a_local_status_change_reaches_the_remote_server_in_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let presence = PresenceService::open(
            db.clone(),
            PresenceServiceConfig::default(),
            Arc::new(NoWake),
        )
        .unwrap();
        presence.set_server_name(server_name!("home.org").to_owned());
        let room: ruma::OwnedRoomId = "!r:home.org".try_into().unwrap();
        let (a, r) = (user_id!("@a:home.org"), user_id!("@r:remote.org"));
        presence.membership_changed(&room, a, true);
        presence.membership_changed(&room, r, true);
        let fake = Fake::default();
        let sender = FederationSender::start(db, fake.clone(), config()).unwrap();
        let _bridge = PresenceBridge::install(&presence, sender, PeerTrust::default());
        presence
            .set_status(a, "D", presence_core::DeviceState::Online, None)
            .unwrap();
        until(|| !fake.presence_to("remote.org").is_empty()).await;
        let got = fake.presence_to("remote.org");
        assert_eq!(
            (got[0]["user_id"].as_str(), got[0]["presence"].as_str()),
            (Some("@a:home.org"), Some("online"))
        );
        assert!(got[0].get("allowed_recipients").is_none());
    }
}

mod ephemeral_tests {
    use super::*;
    use crate::ephemeral_out::EphemeralBridge;
    use ephemeral::{EphemeralService, Origin, Receipt, ReceiptType};
    use presence_service::{PresenceService, PresenceServiceConfig, SyncWaker};

    struct NoWake;
    impl SyncWaker for NoWake {
        fn wake_users(&self, _: &[&UserId], _: u64) {}
    }

    fn edus_to(fake: &Fake, dest: &str, ty: &str) -> Vec<Value> {
        fake.sent()
            .iter()
            .filter(|(d, _, _)| d == dest)
            .flat_map(|(_, _, b)| b["edus"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["edu_type"] == ty)
            .collect()
    }

    #[tokio::test]
    async fn local_typing_and_public_receipts_go_to_the_room_servers_private_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let presence = PresenceService::open(
            db.clone(),
            PresenceServiceConfig::default(),
            Arc::new(NoWake),
        )
        .unwrap();
        presence.set_server_name(server_name!("home.org").to_owned());
        let room: ruma::OwnedRoomId = "!r:home.org".try_into().unwrap();
        let (a, r) = (user_id!("@a:home.org"), user_id!("@r:remote.org"));
        presence.membership_changed(&room, a, true);
        presence.membership_changed(&room, r, true);
        let fake = Fake::default();
        let sender = FederationSender::start(db.clone(), fake.clone(), config()).unwrap();
        let eph = EphemeralService::new(db);
        eph.add_observer(EphemeralBridge::new(sender.clone(), &presence));
        eph.set_typing(&room, a, true, Duration::from_secs(30), Origin::Local)
            .unwrap();
        // A remote user's typing (from their server) is not echoed back.
        eph.set_typing(
            &room,
            r,
            true,
            Duration::from_secs(30),
            Origin::Remote(server_name!("remote.org").to_owned()),
        )
        .unwrap();
        for (ty, ev) in [(ReceiptType::ReadPrivate, "$p"), (ReceiptType::Read, "$e")] {
            eph.put_receipt(
                Receipt {
                    room_id: room.clone(),
                    user_id: a.to_owned(),
                    receipt_type: ty,
                    event_id: ruma::OwnedEventId::try_from(format!("{ev}:home.org")).unwrap(),
                    thread_id: None,
                    ts: 7,
                },
                1,
                Origin::Local,
            )
            .unwrap();
        }
        until(|| {
            !edus_to(&fake, "remote.org", "m.typing").is_empty()
                && !edus_to(&fake, "remote.org", "m.receipt").is_empty()
        })
        .await;
        until(|| idle(&sender)).await;
        let typing = edus_to(&fake, "remote.org", "m.typing");
        assert_eq!(typing.len(), 1);
        assert_eq!(
            typing[0]["content"],
            json!({"room_id": "!r:home.org", "user_id": "@a:home.org", "typing": true})
        );
        let receipts = edus_to(&fake, "remote.org", "m.receipt");
        assert_eq!(receipts.len(), 1, "private receipts stay home");
        assert_eq!(
            receipts[0]["content"]["!r:home.org"]["m.read"]["@a:home.org"]["event_ids"],
            json!(["$e:home.org"])
        );
    }
}

mod membership_tests {
    use super::*;
    use crate::bridge::PresenceBridge;
    use crate::presence_out::PeerTrust;
    use presence_service::{PresenceService, PresenceServiceConfig, SyncWaker};

    struct NoWake;
    impl SyncWaker for NoWake {
        fn wake_users(&self, _: &[&UserId], _: u64) {}
    }

    #[tokio::test]
    async fn a_newly_joined_remote_server_gets_current_presence_and_a_leaving_one_a_final_offline()
    {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let presence = PresenceService::open(
            db.clone(),
            PresenceServiceConfig::default(),
            Arc::new(NoWake),
        )
        .unwrap();
        presence.set_server_name(server_name!("home.org").to_owned());
        let room: ruma::OwnedRoomId = "!r:home.org".try_into().unwrap();
        let (a, r) = (user_id!("@a:home.org"), user_id!("@r:remote.org"));
        presence.membership_changed(&room, a, true);
        let fake = Fake::default();
        let sender = FederationSender::start(db, fake.clone(), config()).unwrap();
        let _bridge = PresenceBridge::install(&presence, sender.clone(), PeerTrust::default());
        presence
            .set_status(a, "D", presence_core::DeviceState::Online, None)
            .unwrap();
        // Nobody remote yet: nothing sent.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(fake.sent().is_empty());
        presence.membership_changed(&room, r, true);
        presence.membership_observed(&room, r);
        until(|| fake.presence_to("remote.org").len() == 1).await;
        assert_eq!(fake.presence_to("remote.org")[0]["presence"], "online");
        presence.membership_changed(&room, r, false);
        presence.membership_observed(&room, r);
        until(|| fake.presence_to("remote.org").len() == 2).await;
        assert_eq!(fake.presence_to("remote.org")[1]["presence"], "offline");
    }
}
