//! End-to-end encryption endpoints through the real binary, two (or three) clients: key
//! upload, query (with display names and cross-signing keys), claim (one-time keys in
//! upload order, then the fallback key), `/keys/changes` and `device_lists` in `/sync`
//! for a room-mate, to-device delivery (idempotent txn, `*`, deletion once acknowledged,
//! long-poll wake-up), cross-signing behind UIA, signatures, key backup, and a deleted
//! device's keys going away.
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

async fn sync(s: &TestServer, u: &User, query: &str) -> Value {
    let (st, body) = s
        .get(&format!("/_matrix/client/v3/sync?{query}"), Some(&u.token))
        .await;
    assert_eq!(st, 200, "{body}");
    body
}

fn next_batch(r: &Value) -> String {
    r["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Long-poll from `since` until `pred` holds; returns the matching response.
async fn sync_until(s: &TestServer, u: &User, since: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let within = Duration::from_secs(20);
    let started = Instant::now();
    let mut since = since.to_owned();
    loop {
        let left = within.saturating_sub(started.elapsed());
        assert!(!left.is_zero(), "condition not met within {within:?}");
        let r = sync(
            s,
            u,
            &format!(
                "since={since}&timeout={}&set_presence=offline",
                left.as_millis()
            ),
        )
        .await;
        if pred(&r) {
            return r;
        }
        since = next_batch(&r);
    }
}

fn device_keys(u: &User) -> Value {
    common::signing::device_keys(&u.user_id, &u.device_id)
}

fn otk(id: &str) -> (String, Value) {
    (
        format!("signed_curve25519:{id}"),
        json!({ "key": format!("otk-{id}"), "signatures": {} }),
    )
}

async fn upload(s: &TestServer, u: &User, body: Value) -> Value {
    let (st, r) = s
        .post("/_matrix/client/v3/keys/upload", Some(&u.token), body)
        .await;
    assert_eq!(st, 200, "{r}");
    r
}

async fn claim(s: &TestServer, by: &User, of: &User) -> Value {
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&by.token),
            json!({ "one_time_keys": { of.user_id.clone(): { of.device_id.clone(): "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    r
}

#[tokio::test]
async fn keys_upload_query_claim_and_fallback() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;

    // Upload: device keys and two one-time keys, then a third key and a fallback key.
    let (a, b) = (otk("A"), otk("B"));
    let r = upload(
        &s,
        &bob,
        json!({
            "device_keys": device_keys(&bob),
            "one_time_keys": { a.0.clone(): a.1.clone(), b.0.clone(): b.1.clone() },
        }),
    )
    .await;
    assert_eq!(r["one_time_key_counts"]["signed_curve25519"], 2);
    let c = otk("C");
    let r = upload(&s, &bob, json!({
        "one_time_keys": { c.0.clone(): c.1.clone() },
        "fallback_keys": { "signed_curve25519:FB": { "key": "fb", "fallback": true, "signatures": {} } },
    }))
    .await;
    assert_eq!(r["one_time_key_counts"]["signed_curve25519"], 3);

    // Keys for another user, or malformed ones, are refused.
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({ "device_keys": device_keys(&bob) }),
        )
        .await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({ "device_keys": { "user_id": alice.user_id, "device_id": alice.device_id } }),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{r}"
    );

    // Query: bob's device with its display name; alice has none (an empty object).
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/devices/{}", enc(&bob.device_id)),
            Some(&bob.token),
            json!({ "display_name": "Bob's phone" }),
        )
        .await;
    assert_eq!(st, 200);
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { bob.user_id.clone(): [], alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let dk = &r["device_keys"][&bob.user_id][&bob.device_id];
    assert_eq!(dk["keys"], device_keys(&bob)["keys"]);
    assert_eq!(dk["unsigned"]["device_display_name"], "Bob's phone");
    assert_eq!(r["device_keys"][&alice.user_id], json!({}));
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { bob.user_id.clone(): { "x": 1 } } }),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{r}"
    );

    // Claims: one-time keys in upload order (A and B came in one upload, either order), then
    // C, then the fallback key — which is then reported used in bob's sync.
    let mut first_two = Vec::new();
    for _ in 0..2 {
        let r = claim(&s, &alice, &bob).await;
        let keys = r["one_time_keys"][&bob.user_id][&bob.device_id]
            .as_object()
            .expect("a key")
            .clone();
        first_two.extend(keys.keys().cloned());
    }
    first_two.sort();
    assert_eq!(first_two, vec![a.0.clone(), b.0.clone()]);
    let r = claim(&s, &alice, &bob).await;
    assert_eq!(
        r["one_time_keys"][&bob.user_id][&bob.device_id],
        json!({ c.0.clone(): c.1.clone() })
    );
    let sync_before = sync(&s, &bob, "").await;
    assert_eq!(
        sync_before["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    assert_eq!(
        sync_before["device_one_time_keys_count"]["signed_curve25519"],
        0
    );
    for _ in 0..2 {
        let r = claim(&s, &alice, &bob).await;
        assert_eq!(
            r["one_time_keys"][&bob.user_id][&bob.device_id]["signed_curve25519:FB"]["key"], "fb",
            "{r}"
        );
    }
    let after = sync(&s, &bob, "").await;
    assert_eq!(after["device_unused_fallback_key_types"], json!([]));

    // A device with nothing to claim is left out of the answer.
    let r = claim(&s, &bob, &alice).await;
    assert!(r["one_time_keys"].get(&alice.user_id).is_none(), "{r}");

    // A remote user with federation off is a failure, not an error.
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { "@x:elsewhere.invalid": [] } }),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(r["failures"]["elsewhere.invalid"].is_object(), "{r}");
}

#[tokio::test]
async fn device_list_changes_reach_room_mates() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (st, r) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let since = next_batch(&sync(&s, &alice, "").await);
    let carol_since = next_batch(&sync(&s, &carol, "").await);

    // Bob logs in a second device and uploads its keys: alice's long-poll wakes with it.
    let bob2 = s.login("bob").await;
    let waiter = {
        let (url, token, since) = (
            s.url("/_matrix/client/v3/sync"),
            alice.token.clone(),
            since.clone(),
        );
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!(
                    "{url}?since={since}&timeout=20000&set_presence=offline"
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("sync")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    upload(&s, &bob2, json!({ "device_keys": device_keys(&bob2) })).await;
    let woke = waiter.await.expect("join");
    let r = if woke["device_lists"]["changed"]
        .as_array()
        .is_some_and(|c| c.iter().any(|u| u == &bob.user_id))
    {
        woke
    } else {
        sync_until(&s, &alice, &next_batch(&woke), |r| {
            r["device_lists"]["changed"]
                .as_array()
                .is_some_and(|c| c.iter().any(|u| u == &bob.user_id))
        })
        .await
    };
    let to = next_batch(&r);
    let (st, ch) = s
        .get(
            &format!("/_matrix/client/v3/keys/changes?from={since}&to={to}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{ch}");
    assert_eq!(ch["changed"], json!([bob.user_id.clone()]), "{ch}");

    // Renaming a device with keys is a change too (the name is shown with the keys).
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/devices/{}", enc(&bob2.device_id)),
            Some(&bob2.token),
            json!({ "display_name": "laptop" }),
        )
        .await;
    assert_eq!(st, 200);
    let r = sync_until(&s, &alice, &to, |r| {
        r["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &bob.user_id))
    })
    .await;
    let to = next_batch(&r);

    // Carol shares no room with bob: she is not told.
    let r = sync(&s, &carol, &format!("since={carol_since}&timeout=0")).await;
    assert_eq!(r["device_lists"]["changed"], json!([]), "{r}");

    // Bob leaves: alice sees him in `left`.
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    sync_until(&s, &alice, &to, |r| {
        r["device_lists"]["left"]
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u == &bob.user_id))
    })
    .await;
}

#[tokio::test]
async fn to_device_delivery_idempotency_and_deletion() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let since = next_batch(&sync(&s, &bob, "").await);

    let send = |txn: &'static str, n: i64, device: String| {
        let (s, alice, bob) = (&s, &alice, &bob);
        async move {
            let (st, r) = s
                .put(
                    &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                    Some(&alice.token),
                    json!({ "messages": { bob.user_id.clone(): { device: { "n": n } } } }),
                )
                .await;
            assert_eq!(st, 200, "{r}");
        }
    };
    // A waiting sync wakes for it; the same txn twice stores one message.
    let waiter = {
        let (url, token, since) = (
            s.url("/_matrix/client/v3/sync"),
            bob.token.clone(),
            since.clone(),
        );
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!(
                    "{url}?since={since}&timeout=20000&set_presence=offline"
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("sync")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    send("t1", 1, bob.device_id.clone()).await;
    send("t1", 1, bob.device_id.clone()).await;
    let woke = waiter.await.expect("join");
    let got = if woke["to_device"]["events"]
        .as_array()
        .is_some_and(|e| !e.is_empty())
    {
        woke
    } else {
        sync_until(&s, &bob, &next_batch(&woke), |r| {
            r["to_device"]["events"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        })
        .await
    };
    let events = got["to_device"]["events"]
        .as_array()
        .expect("events")
        .clone();
    assert_eq!(events.len(), 1, "{got}");
    assert_eq!(events[0]["sender"], alice.user_id);
    assert_eq!(events[0]["type"], "m.test");
    assert_eq!(events[0]["content"], json!({ "n": 1 }));

    // Retrying the old token delivers it again (the response may have been lost)...
    let again = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert_eq!(
        again["to_device"]["events"].as_array().map(Vec::len),
        Some(1),
        "{again}"
    );
    // ...and syncing from the token that delivered it acknowledges and deletes it.
    let next = sync(&s, &bob, &format!("since={}&timeout=0", next_batch(&again))).await;
    assert_eq!(next["to_device"]["events"], json!([]), "{next}");
    let later = sync(&s, &bob, &format!("since={}&timeout=0", next_batch(&again))).await;
    assert_eq!(later["to_device"]["events"], json!([]), "deleted: {later}");

    // `*` reaches every device of the user; an unknown device gets nothing stored.
    let bob2 = s.login("bob").await;
    let b2_since = next_batch(&sync(&s, &bob2, "").await);
    send("t2", 2, "*".into()).await;
    send("t3", 3, "NOSUCHDEVICE".into()).await;
    let r = sync_until(&s, &bob2, &b2_since, |r| {
        r["to_device"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    assert_eq!(
        r["to_device"]["events"][0]["content"],
        json!({ "n": 2 }),
        "{r}"
    );
    let r = sync(&s, &bob, &format!("since={}&timeout=0", next_batch(&next))).await;
    assert_eq!(
        r["to_device"]["events"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
}

#[tokio::test]
async fn cross_signing_signatures_and_uia() {
    use common::signing::{Key, cross_signing_key as key};
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let a = alice.user_id.as_str();
    let (am, ass, aus) = (
        Key::from_label("alice master"),
        Key::from_label("alice ssk"),
        Key::from_label("alice usk"),
    );
    let upload_signing = |body: Value| {
        let (s, token) = (&s, alice.token.clone());
        async move {
            s.post(
                "/_matrix/client/v3/keys/device_signing/upload",
                Some(&token),
                body,
            )
            .await
        }
    };
    // Keys not signed by the master key, or with a broken signature: 400 M_INVALID_SIGNATURE,
    // nothing stored.
    let mut broken = key(a, "self_signing", &ass, Some(&am));
    broken["usage"] = json!(["self_signing", "x"]);
    for bad in [
        key(a, "self_signing", &ass, None),
        key(a, "self_signing", &ass, Some(&aus)),
        broken,
    ] {
        let (st, r) = upload_signing(json!({
            "master_key": key(a, "master", &am, None),
            "self_signing_key": bad,
        }))
        .await;
        assert_eq!(
            (st, r["errcode"].as_str()),
            (400, Some("M_INVALID_SIGNATURE")),
            "{r}"
        );
    }
    // First upload: no UIA needed.
    let (st, r) = upload_signing(json!({
        "master_key": key(a, "master", &am, None),
        "self_signing_key": key(a, "self_signing", &ass, Some(&am)),
        "user_signing_key": key(a, "user_signing", &aus, Some(&am)),
    }))
    .await;
    assert_eq!(st, 200, "{r}");
    // Replacing them: 401 with a password flow, then accepted with the password.
    let am2 = Key::from_label("alice master 2");
    let replace = json!({ "master_key": key(a, "master", &am2, None) });
    let (st, r) = upload_signing(replace.clone()).await;
    assert_eq!(st, 401, "{r}");
    assert_eq!(r["flows"][0]["stages"][0], "m.login.password");
    let mut with_auth = replace.clone();
    with_auth["auth"] = json!({ "type": "m.login.password", "session": r["session"],
        "identifier": { "type": "m.id.user", "user": alice.user_id }, "password": "password" });
    let (st, r) = upload_signing(with_auth).await;
    assert_eq!(st, 200, "{r}");
    // A new self-signing key must now be signed by the new master key.
    let ass2 = Key::from_label("alice ssk 2");
    let (st, r) =
        upload_signing(json!({ "self_signing_key": key(a, "self_signing", &ass2, Some(&am)) }))
            .await;
    assert_eq!(st, 401, "{r}");
    let auth = json!({ "type": "m.login.password", "session": r["session"],
        "identifier": { "type": "m.id.user", "user": alice.user_id }, "password": "password" });
    let (st, r) = upload_signing(
        json!({ "self_signing_key": key(a, "self_signing", &ass2, Some(&am)), "auth": auth }),
    )
    .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (400, Some("M_INVALID_SIGNATURE")),
        "{r}"
    );
    let (st, r) = upload_signing(
        json!({ "self_signing_key": key(a, "self_signing", &ass2, Some(&am2)), "auth": auth }),
    )
    .await;
    assert_eq!(st, 200, "{r}");

    // Bob sees alice's master and self-signing keys, not her user-signing key.
    let (_, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(
        r["master_keys"][&alice.user_id]["keys"][am2.own_id()],
        am2.public,
        "{r}"
    );
    assert!(r["self_signing_keys"][&alice.user_id].is_object(), "{r}");
    assert!(r["user_signing_keys"].get(&alice.user_id).is_none(), "{r}");
    let (_, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert!(r["user_signing_keys"][&alice.user_id].is_object(), "{r}");

    // Device keys with a bad signature are refused.
    let mut bad_dk = device_keys(&alice);
    bad_dk["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({ "device_keys": bad_dk }),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (400, Some("M_INVALID_SIGNATURE")),
        "{r}"
    );

    // Alice signs her device with her self-signing key. Failures, per item: a signature on
    // a key that is not the stored one, one by another key, one that does not verify.
    upload(&s, &alice, json!({ "device_keys": device_keys(&alice) })).await;
    let mut signed = device_keys(&alice);
    ass2.sign(&mut signed, a, &ass2.public);
    let mut forged = device_keys(&alice);
    forged["keys"] = json!({ "ed25519:X": "other" });
    ass2.sign(&mut forged, a, &ass2.public);
    let mut by_old_key = device_keys(&alice);
    ass.sign(&mut by_old_key, a, &ass.public);
    let mut garbled = device_keys(&alice);
    garbled["signatures"][a][ass2.own_id()] = json!("AAAA");
    for bad in [forged, by_old_key, garbled] {
        let (st, r) = s
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                Some(&alice.token),
                json!({ a: { alice.device_id.clone(): bad } }),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(
            r["failures"][a][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
            "{r}"
        );
    }
    let (st, r) = s
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice.token),
            json!({ a: { alice.device_id.clone(): signed.clone() } }),
        )
        .await;
    assert_eq!((st, &r["failures"]), (200, &json!({})), "{r}");
    let (_, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.clone(): [alice.device_id.clone()] } }),
        )
        .await;
    assert_eq!(
        r["device_keys"][a][&alice.device_id]["signatures"][a][ass2.own_id()],
        signed["signatures"][a][ass2.own_id()],
        "{r}"
    );
}

#[tokio::test]
async fn key_backup_and_deleted_devices() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (st, r) = s
        .get("/_matrix/client/v3/room_keys/version", Some(&alice.token))
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{r}"
    );
    let (st, r) = s
        .post("/_matrix/client/v3/room_keys/version", Some(&alice.token),
            json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "pk" } }))
        .await;
    assert_eq!(st, 200, "{r}");
    let version = r["version"].as_str().expect("version").to_owned();
    let session = json!({ "first_message_index": 3, "forwarded_count": 0, "is_verified": false, "session_data": { "c": 1 } });
    let (st, r) = s
        .put(
            &format!(
                "/_matrix/client/v3/room_keys/keys/{}/S1?version={version}",
                enc("!r:x")
            ),
            Some(&alice.token),
            session.clone(),
        )
        .await;
    assert_eq!((st, r["count"].as_u64()), (200, Some(1)), "{r}");
    let (_, info) = s
        .get("/_matrix/client/v3/room_keys/version", Some(&alice.token))
        .await;
    assert_eq!(
        (info["version"].as_str(), info["count"].as_u64()),
        (Some(version.as_str()), Some(1))
    );
    assert_eq!(info["etag"], r["etag"]);
    let (st, r) = s
        .get(
            &format!("/_matrix/client/v3/room_keys/keys?version={version}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(r["rooms"]["!r:x"]["sessions"]["S1"], session);
    let (st, r) = s
        .put(
            &format!(
                "/_matrix/client/v3/room_keys/keys/{}/S1?version=999",
                enc("!r:x")
            ),
            Some(&alice.token),
            session.clone(),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (403, Some("M_WRONG_ROOM_KEYS_VERSION")),
        "{r}"
    );
    assert_eq!(r["current_version"], version.as_str());

    // A deleted device's keys are no longer served.
    let second = s.login("alice").await;
    let one = otk("1");
    upload(
        &s,
        &second,
        json!({ "device_keys": device_keys(&second), "one_time_keys": { one.0: one.1 } }),
    )
    .await;
    let (st, _) = s
        .post("/_matrix/client/v3/logout", Some(&second.token), json!({}))
        .await;
    assert_eq!(st, 200);
    let (_, r) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert!(
        r["device_keys"][&alice.user_id]
            .get(&second.device_id)
            .is_none(),
        "{r}"
    );
    let r = claim(&s, &alice, &second).await;
    assert!(r["one_time_keys"].get(&alice.user_id).is_none(), "{r}");
}
