//! Two real pulse binaries (the harness in tests/common/federating.rs): end-to-end
//! encryption across servers — key queries and claims through `/user/keys/*` (fallback
//! when the one-time key is gone, `failures` for an unreachable server), to-device
//! messages as `m.direct_to_device` EDUs, and a device-list change reaching a room-mate on
//! the other server as `m.device_list_update`.
mod common;

use std::time::{Duration, Instant};

use common::federating::{Server, User, join};
use serde_json::{Value, json};

fn device_keys(u: &User) -> Value {
    common::signing::device_keys(&u.id, &u.device)
}

async fn upload_keys(s: &Server, u: &User) {
    let (st, r) = s
        .req("POST", "/_matrix/client/v3/keys/upload", &u.token, Some(json!({
            "device_keys": device_keys(u),
            "one_time_keys": { "signed_curve25519:1": { "key": "otk1", "signatures": {} } },
            "fallback_keys": { "signed_curve25519:F": { "key": "fb", "fallback": true, "signatures": {} } },
        })))
        .await;
    assert_eq!(st, 200, "{r}");
}

async fn sync_since(s: &Server, u: &User, since: &str) -> Value {
    let (st, r) = s
        .req(
            "GET",
            &format!("/_matrix/client/v3/sync?since={since}&timeout=1000&set_presence=offline"),
            &u.token,
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    r
}

#[tokio::test]
async fn keys_claims_to_device_and_device_lists_across_two_servers() {
    let a = Server::start().await;
    let mut b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    upload_keys(&a, &alice).await;
    upload_keys(&b, &bob).await;
    let room = a
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (st, r) = join(&b, &bob, &room, &a).await;
    assert_eq!(st, 200, "{r}");

    // Alice queries bob's keys: they come from bob's server.
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { bob.id.clone(): [] } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["device_keys"][&bob.id][&bob.device]["keys"],
        device_keys(&bob)["keys"],
        "{r}"
    );
    assert_eq!(r["failures"], json!({}), "{r}");

    // Claims: the one-time key, then the fallback key.
    let claim =
        json!({ "one_time_keys": { bob.id.clone(): { bob.device.clone(): "signed_curve25519" } } });
    let (_, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/claim",
            &alice.token,
            Some(claim.clone()),
        )
        .await;
    assert_eq!(
        r["one_time_keys"][&bob.id][&bob.device]["signed_curve25519:1"]["key"], "otk1",
        "{r}"
    );
    let (_, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/claim",
            &alice.token,
            Some(claim),
        )
        .await;
    assert_eq!(
        r["one_time_keys"][&bob.id][&bob.device]["signed_curve25519:F"]["key"], "fb",
        "{r}"
    );

    // An unreachable server is a failure, the reachable ones still answer.
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { "@x:127.0.0.1:1": [], bob.id.clone(): [] } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(r["failures"]["127.0.0.1:1"].is_object(), "{r}");
    assert!(r["device_keys"][&bob.id][&bob.device].is_object(), "{r}");

    // To-device: alice → bob over an m.direct_to_device EDU.
    let (_, r) = b
        .req("GET", "/_matrix/client/v3/sync?timeout=0", &bob.token, None)
        .await;
    let mut bob_since = r["next_batch"].as_str().unwrap().to_owned();
    let (st, r) = a
        .req("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1", &alice.token,
            Some(json!({ "messages": { bob.id.clone(): { bob.device.clone(): { "hello": "bob" } } } })))
        .await;
    assert_eq!(st, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = sync_since(&b, &bob, &bob_since).await;
        let events = r["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(e) = events.first() {
            assert_eq!(e["sender"], alice.id);
            assert_eq!(e["content"], json!({ "hello": "bob" }));
            break;
        }
        bob_since = r["next_batch"].as_str().unwrap().to_owned();
        assert!(
            Instant::now() < deadline,
            "to-device message did not arrive"
        );
    }

    // Bob's keys change (a new device): alice's /sync lists him in device_lists.changed
    // (an m.device_list_update EDU), and a query finds both devices.
    let (_, r) = a
        .req(
            "GET",
            "/_matrix/client/v3/sync?timeout=0",
            &alice.token,
            None,
        )
        .await;
    let mut alice_since = r["next_batch"].as_str().unwrap().to_owned();
    let (st, login) = b
        .req("POST", "/_matrix/client/v3/login", "",
            Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "password" })))
        .await;
    assert_eq!(st, 200, "{login}");
    let bob2 = User {
        id: bob.id.clone(),
        token: login["access_token"].as_str().unwrap().to_owned(),
        device: login["device_id"].as_str().unwrap().to_owned(),
    };
    upload_keys(&b, &bob2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = sync_since(&a, &alice, &alice_since).await;
        if r["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &bob.id))
        {
            break;
        }
        alice_since = r["next_batch"].as_str().unwrap().to_owned();
        assert!(
            Instant::now() < deadline,
            "device list change did not arrive"
        );
    }
    let (_, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { bob.id.clone(): [] } })),
        )
        .await;
    assert_eq!(
        r["device_keys"][&bob.id].as_object().map(|o| o.len()),
        Some(2),
        "{r}"
    );

    // Alice's server keeps bob's device list (resynced once through /user/devices, then
    // kept current by the EDU): with bob's server down, the query still answers in full.
    b.kill();
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { bob.id.clone(): [bob2.device.clone()] } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["failures"], json!({}), "{r}");
    assert_eq!(
        r["device_keys"][&bob.id][&bob2.device]["keys"],
        device_keys(&bob2)["keys"],
        "{r}"
    );
    assert_eq!(
        r["device_keys"][&bob.id].as_object().map(|o| o.len()),
        Some(1),
        "only the device asked for: {r}"
    );

    // No shared room, no updates: bob leaves, his second device logs out meanwhile (nothing
    // reaches alice's server), he rejoins. Alice's server dropped its copy at the leave and
    // resyncs: the logged-out device is gone.
    b.restart().await;
    let (st, r) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", common::enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.membership_of(&alice, &room, &bob.id).await.as_deref() != Some("leave") {
        assert!(
            Instant::now() < deadline,
            "bob's leave did not reach alice's server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cache entry is dropped after the leave's commit, on the blocking pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, r) = b
        .req(
            "POST",
            "/_matrix/client/v3/logout",
            &bob2.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = join(&b, &bob, &room, &a).await;
    assert_eq!(st, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, r) = a
            .req(
                "POST",
                "/_matrix/client/v3/keys/query",
                &alice.token,
                Some(json!({ "device_keys": { bob.id.clone(): [] } })),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        let devices = r["device_keys"][&bob.id]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if devices.len() == 1 {
            assert!(devices.contains_key(&bob.device), "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's server still shows bob's logged-out device: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn user_signing_signatures_on_a_remote_master_key_are_shown_to_the_signer_only() {
    use common::signing::{Key, cross_signing_key as key};
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let dave = a.register("dave").await;
    let bob = b.register("bob").await;
    // Bob (Pulse B) has a master key; alice (Pulse A) a master and user-signing key.
    let bm = Key::from_label("bob master");
    let (st, r) = b
        .req(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            &bob.token,
            Some(json!({ "master_key": key(&bob.id, "master", &bm, None) })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (am, aus) = (
        Key::from_label("alice master"),
        Key::from_label("alice usk"),
    );
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            &alice.token,
            Some(json!({
                "master_key": key(&alice.id, "master", &am, None),
                "user_signing_key": key(&alice.id, "user_signing", &aus, Some(&am)),
            })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let room = a
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (st, r) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/join/{}", common::enc(&room)),
            &dave.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = join(&b, &bob, &room, &a).await;
    assert_eq!(st, 200, "{r}");
    let query = |who: &User| {
        let (a, token, bob_id) = (&a, who.token.clone(), bob.id.clone());
        async move {
            let (st, r) = a
                .req(
                    "POST",
                    "/_matrix/client/v3/keys/query",
                    &token,
                    Some(json!({ "device_keys": { bob_id: [] } })),
                )
                .await;
            assert_eq!(st, 200, "{r}");
            r
        }
    };
    let r = query(&alice).await;
    let mut master = r["master_keys"][&bob.id].clone();
    assert_eq!(master["keys"][bm.own_id()], json!(bm.public), "{r}");
    // Alice verifies bob: she signs his master key with her user-signing key.
    aus.sign(&mut master, &alice.id, &aus.public);
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/signatures/upload",
            &alice.token,
            Some(json!({ bob.id.clone(): { bm.public.clone(): master.clone() } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["failures"], json!({}), "{r}");
    let sig = &master["signatures"][&alice.id][aus.own_id()];
    // Alice's answers about bob carry her signature, from the cache…
    let r = query(&alice).await;
    assert_eq!(
        &r["master_keys"][&bob.id]["signatures"][&alice.id][aus.own_id()],
        sig,
        "{r}"
    );
    // …dave's (same server, same cache) do not.
    let r = query(&dave).await;
    assert!(
        r["master_keys"][&bob.id]["signatures"]
            .get(&alice.id)
            .is_none(),
        "{r}"
    );
    // Bob's own server never had it: when alice asks without a shared room (a live query of
    // Pulse B), the signature is still added.
    let (st, r) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", common::enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.membership_of(&alice, &room, &bob.id).await.as_deref() != Some("leave") {
        assert!(
            Instant::now() < deadline,
            "bob's leave did not reach alice's server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = query(&alice).await;
    assert_eq!(r["failures"], json!({}), "{r}");
    assert_eq!(
        &r["master_keys"][&bob.id]["signatures"][&alice.id][aus.own_id()],
        sig,
        "{r}"
    );
}
