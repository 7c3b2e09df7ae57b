use std::sync::atomic::{AtomicUsize, Ordering};

use server_keys::ServerKeys;

use super::*;

const DAY: u64 = 24 * 3600 * 1000;

/// Documents by server; notary answers by notary name; counts the calls.
#[derive(Default)]
struct FakeFetcher {
    direct: Mutex<HashMap<String, serde_json::Value>>,
    notary: Mutex<HashMap<String, serde_json::Value>>,
    calls: AtomicUsize,
}

impl KeyFetcher for FakeFetcher {
    fn server_keys<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<serde_json::Value>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = self.direct.lock().unwrap().get(server).cloned();
        Box::pin(async move {
            r.ok_or_else(|| FederationError::Transport {
                destination: server.to_owned(),
                message: "unreachable".into(),
            })
        })
    }

    fn notary_query<'a>(
        &'a self,
        notary: &'a str,
        _body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = self.notary.lock().unwrap().get(notary).cloned();
        Box::pin(async move {
            r.ok_or_else(|| FederationError::Transport {
                destination: notary.to_owned(),
                message: "unreachable".into(),
            })
        })
    }
}

fn keys(name: &str) -> ServerKeys {
    ServerKeys::generate_ephemeral(name.try_into().unwrap()).unwrap()
}

fn doc(k: &ServerKeys, published_at: u64) -> serde_json::Value {
    serde_json::to_value(k.key_document(published_at).unwrap()).unwrap()
}

fn b64(k: &ServerKeys) -> Base64 {
    Base64::parse(k.public_key_base64()).unwrap()
}

/// `doc` of the origin countersigned by `notary`.
fn notarised(doc: &serde_json::Value, notary: &ServerKeys) -> serde_json::Value {
    let mut obj: ruma::CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
    notary.sign_json(&mut obj).unwrap();
    serde_json::to_value(obj).unwrap()
}

#[test]
fn key_document_checks_name_signature_and_caps_validity() {
    let k = keys("a.test");
    let d = doc(&k, 1_000);
    let out = check_key_document("a.test", &d, 1_000).unwrap();
    assert_eq!(out.keys.len(), 1);
    assert_eq!(out.keys[0].0, k.key_id());
    assert_eq!(
        out.keys[0].1.valid_until,
        1_000 + server_keys::PUBLISHED_VALIDITY_MS
    );
    assert!(check_key_document("b.test", &d, 1_000).is_err());
    let mut forged = d.clone();
    forged["valid_until_ts"] = serde_json::json!(u64::from(u32::MAX) * 1000);
    assert!(check_key_document("a.test", &forged, 1_000).is_err());
    // A far-future valid_until_ts (correctly signed) is capped at 7 days.
    let far = check_key_document("a.test", &doc(&k, 100 * DAY), 1_000).unwrap();
    assert_eq!(far.valid_until, 1_000 + MAX_VALIDITY_MS);
}

#[tokio::test]
async fn keys_are_stored_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), false).unwrap());
    let a = keys("a.test");
    let fetcher = Arc::new(FakeFetcher::default());
    fetcher
        .direct
        .lock()
        .unwrap()
        .insert("a.test".into(), doc(&a, now_ms()));
    let rk = RemoteKeys::with_fetcher(fetcher.clone(), vec![], Some(db.clone()));
    assert_eq!(
        rk.key_at("a.test", a.key_id(), now_ms()).await.unwrap(),
        b64(&a)
    );
    assert_eq!(
        rk.key_at("a.test", a.key_id(), now_ms()).await.unwrap(),
        b64(&a)
    );
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1, "second hit cached");

    // "Restart": a new cache over the same database, with the origin now unreachable.
    let offline = Arc::new(FakeFetcher::default());
    let rk = RemoteKeys::with_fetcher(offline.clone(), vec![], Some(db.clone()));
    assert_eq!(
        rk.key_at("a.test", a.key_id(), now_ms()).await.unwrap(),
        b64(&a)
    );
    assert_eq!(offline.calls.load(Ordering::SeqCst), 0);
    assert_eq!(rk.key_documents("a.test", 0).await.len(), 1);
}

#[tokio::test]
async fn valid_until_ts_is_honoured_and_refetched() {
    let a = keys("a.test");
    let fetcher = Arc::new(FakeFetcher::default());
    // Published two days ago: valid until one day ago.
    fetcher
        .direct
        .lock()
        .unwrap()
        .insert("a.test".into(), doc(&a, now_ms() - 2 * DAY));
    let rk = RemoteKeys::with_fetcher(fetcher.clone(), vec![], None);
    // Valid for an event sent 36 h ago ...
    assert!(
        rk.key_at("a.test", a.key_id(), now_ms() - 36 * 3600 * 1000)
            .await
            .is_ok()
    );
    // ... not for a request now, even after refetching the (same, stale) document.
    let err = rk.key_at("a.test", a.key_id(), now_ms()).await.unwrap_err();
    assert!(err.to_string().contains("valid at"), "{err}");
    // Failures back off: after a second failure in a row, an immediate retry does not
    // fetch again (one failure alone is retried at once: see the test below).
    let _ = rk.key_at("a.test", "ed25519:other", now_ms()).await;
    let calls = fetcher.calls.load(Ordering::SeqCst);
    let _ = rk.key_at("a.test", "ed25519:other", now_ms()).await;
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn old_keys_are_valid_until_expired_ts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), false).unwrap();
    let name: ruma::OwnedServerName = "a.test".try_into().unwrap();
    let first = ServerKeys::load_or_generate(&db, name.clone()).unwrap();
    let expired_at = now_ms() - DAY;
    let rotated = ServerKeys::rotate(&db, name, expired_at).unwrap();
    let fetcher = Arc::new(FakeFetcher::default());
    fetcher
        .direct
        .lock()
        .unwrap()
        .insert("a.test".into(), doc(&rotated, now_ms()));
    let rk = RemoteKeys::with_fetcher(fetcher, vec![], None);
    assert_eq!(
        rk.key_at("a.test", first.key_id(), expired_at - 1)
            .await
            .unwrap(),
        b64(&first)
    );
    assert!(
        rk.key_at("a.test", first.key_id(), expired_at + 1)
            .await
            .is_err()
    );
    assert!(
        rk.key_at("a.test", rotated.key_id(), now_ms())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn notary_is_asked_when_the_origin_is_unreachable() {
    let a = keys("a.test");
    let notary = keys("notary.test");
    let fetcher = Arc::new(FakeFetcher::default());
    fetcher
        .direct
        .lock()
        .unwrap()
        .insert("notary.test".into(), doc(&notary, now_ms()));
    fetcher.notary.lock().unwrap().insert(
        "notary.test".into(),
        serde_json::json!({ "server_keys": [notarised(&doc(&a, now_ms()), &notary)] }),
    );
    let rk = RemoteKeys::with_fetcher(fetcher.clone(), vec!["notary.test".into()], None);
    assert_eq!(
        rk.key_at("a.test", a.key_id(), now_ms()).await.unwrap(),
        b64(&a)
    );
}

#[tokio::test]
async fn notary_answers_need_both_signatures() {
    let a = keys("a.test");
    let notary = keys("notary.test");
    let impostor = keys("a.test");
    let cases = [
        // Not countersigned by the notary.
        doc(&a, now_ms()),
        // Countersigned, but signed by someone else claiming to be a.test.
        notarised(&doc(&impostor, now_ms()), &keys("notary.test")),
        // Signed by a key that is not the notary's published one.
        notarised(&doc(&a, now_ms()), &keys("notary.test")),
    ];
    for (i, answer) in cases.into_iter().enumerate() {
        let fetcher = Arc::new(FakeFetcher::default());
        fetcher
            .direct
            .lock()
            .unwrap()
            .insert("notary.test".into(), doc(&notary, now_ms()));
        fetcher.notary.lock().unwrap().insert(
            "notary.test".into(),
            serde_json::json!({ "server_keys": [answer] }),
        );
        let rk = RemoteKeys::with_fetcher(fetcher, vec!["notary.test".into()], None);
        let ids = [a.key_id(), impostor.key_id()];
        for id in ids {
            assert!(
                rk.key_at("a.test", id, now_ms()).await.is_err(),
                "case {i} accepted key {id}"
            );
        }
    }
}

#[tokio::test]
async fn one_failed_fetch_is_retried_at_once_and_two_start_a_pause() {
    let a = keys("a.test");
    let fetcher = Arc::new(FakeFetcher::default());
    let rk = RemoteKeys::with_fetcher(fetcher.clone(), vec![], None);
    // a.test is not up yet: the first ask fails...
    assert!(rk.key_at("a.test", a.key_id(), now_ms()).await.is_err());
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
    // ...and a moment later it is: the next ask goes out and succeeds.
    fetcher
        .direct
        .lock()
        .unwrap()
        .insert("a.test".into(), doc(&a, now_ms()));
    assert_eq!(
        rk.key_at("a.test", a.key_id(), now_ms()).await.unwrap(),
        b64(&a)
    );
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);

    // b.test stays down: two failures in a row, then asks are held back for a while.
    let b = keys("b.test");
    assert!(rk.key_at("b.test", b.key_id(), now_ms()).await.is_err());
    assert!(rk.key_at("b.test", b.key_id(), now_ms()).await.is_err());
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 4);
    assert!(rk.key_at("b.test", b.key_id(), now_ms()).await.is_err());
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 4, "paused");
}

#[test]
fn the_pause_doubles_up_to_a_minute() {
    assert_eq!(failure_backoff_ms(1), 0);
    assert_eq!(failure_backoff_ms(2), 1_000);
    assert_eq!(failure_backoff_ms(3), 2_000);
    assert_eq!(failure_backoff_ms(8), 60_000);
    assert_eq!(failure_backoff_ms(u32::MAX), 60_000);
}
