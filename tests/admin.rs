//! The admin API against the real binary (users, devices, rooms, the presence view; admins
//! only), and online backups: `pulse backup` of a server under write load, `pulse restore`
//! into a new data directory, and every write acknowledged before the backup is there.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestServer, enc};
use serde_json::{Value, json};

#[tokio::test]
async fn admin_api_users_rooms_and_presence() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let ops = s.register_admin("ops").await;
    let room = s
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Lobby" }))
        .await;

    // Not an admin: 403 everywhere.
    for path in [
        "/_synapse/admin/v1/server_version",
        "/_synapse/admin/v2/users",
        "/_synapse/admin/v1/rooms",
    ] {
        let (st, r) = s.get(path, Some(&alice.token)).await;
        assert_eq!(
            (st, r["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{path}: {r}"
        );
    }
    let (st, _) = s.get("/_synapse/admin/v2/users", None).await;
    assert_eq!(st, 401);

    let (st, r) = s
        .get("/_synapse/admin/v1/server_version", Some(&ops.token))
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["server_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("pulse ")),
        "{r}"
    );

    // Users: list, page, filter, one user.
    let (st, r) = s
        .get("/_synapse/admin/v2/users?limit=2", Some(&ops.token))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["total"], 3, "{r}");
    assert_eq!(r["users"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["next_token"], "2", "{r}");
    let (_, r) = s
        .get("/_synapse/admin/v2/users?from=2", Some(&ops.token))
        .await;
    assert_eq!(r["users"][0]["name"], "@ops:localhost", "{r}");
    assert!(r.get("next_token").is_none(), "{r}");
    let (_, r) = s
        .get("/_synapse/admin/v2/users?admins=true", Some(&ops.token))
        .await;
    assert_eq!(r["total"], 1, "{r}");
    let (st, r) = s
        .get(
            &format!("/_synapse/admin/v2/users/{}", enc(&bob.user_id)),
            Some(&ops.token),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (
            r["name"].as_str(),
            r["admin"].as_bool(),
            r["deactivated"].as_bool()
        ),
        (Some(bob.user_id.as_str()), Some(false), Some(false)),
        "{r}"
    );
    assert!(r["creation_ts"].as_u64().is_some_and(|t| t > 0), "{r}");
    let (st, r) = s
        .get(
            "/_synapse/admin/v2/users/@nobody:localhost",
            Some(&ops.token),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{r}"
    );
    let (st, r) = s
        .get("/_synapse/admin/v2/users/@x:elsewhere", Some(&ops.token))
        .await;
    assert_eq!(st, 400, "{r}");

    // Create a user (201), then change password + display name, make admin (200).
    let carol = "/_synapse/admin/v2/users/@carol:localhost";
    let (st, r) = s
        .put(
            carol,
            Some(&ops.token),
            json!({ "password": "password", "displayname": "Carol" }),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["displayname"], "Carol", "{r}");
    s.login("carol").await;
    let (st, r) = s
        .put(
            carol,
            Some(&ops.token),
            json!({ "admin": true, "displayname": "Caro" }),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["admin"].as_bool(), r["displayname"].as_str()),
        (Some(true), Some("Caro")),
        "{r}"
    );

    // Devices and sessions.
    let (st, r) = s
        .get(
            &format!("/_synapse/admin/v2/users/{}/devices", enc(&bob.user_id)),
            Some(&ops.token),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["total"], 1, "{r}");
    assert_eq!(r["devices"][0]["device_id"], bob.device_id.as_str(), "{r}");
    let (st, r) = s
        .get(
            &format!("/_synapse/admin/v1/whois/{}", enc(&bob.user_id)),
            Some(&ops.token),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(r["devices"][&bob.device_id]["sessions"].is_array(), "{r}");

    // Deactivate bob: his token stops working, he leaves his rooms; reactivation needs a
    // password.
    let (st, r) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let bob_path = format!("/_synapse/admin/v2/users/{}", enc(&bob.user_id));
    let (st, r) = s
        .put(&bob_path, Some(&ops.token), json!({ "deactivated": true }))
        .await;
    assert_eq!((st, r["deactivated"].as_bool()), (200, Some(true)), "{r}");
    let (st, _) = s
        .get("/_matrix/client/v3/account/whoami", Some(&bob.token))
        .await;
    assert_eq!(st, 401);
    let (st, r) = s
        .put(&bob_path, Some(&ops.token), json!({ "deactivated": false }))
        .await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = s
        .put(
            &bob_path,
            Some(&ops.token),
            json!({ "deactivated": false, "password": "password" }),
        )
        .await;
    assert_eq!((st, r["deactivated"].as_bool()), (200, Some(false)), "{r}");
    s.login("bob").await;

    // Rooms: list, search, details, members, state.
    let (st, r) = s.get("/_synapse/admin/v1/rooms", Some(&ops.token)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["total_rooms"], 1, "{r}");
    let listed = &r["rooms"][0];
    assert_eq!(
        (listed["room_id"].as_str(), listed["name"].as_str()),
        (Some(room.as_str()), Some("Lobby")),
        "{r}"
    );
    assert_eq!(
        listed["joined_local_members"], 1,
        "bob left when deactivated: {r}"
    );
    let (_, r) = s
        .get("/_synapse/admin/v1/rooms?search_term=lob", Some(&ops.token))
        .await;
    assert_eq!(r["total_rooms"], 1, "{r}");
    let (_, r) = s
        .get(
            "/_synapse/admin/v1/rooms?search_term=nothing",
            Some(&ops.token),
        )
        .await;
    assert_eq!(r["total_rooms"], 0, "{r}");
    let (st, r) = s
        .get(
            "/_synapse/admin/v1/rooms?order_by=nonsense",
            Some(&ops.token),
        )
        .await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = s
        .get(
            &format!("/_synapse/admin/v1/rooms/{}", enc(&room)),
            Some(&ops.token),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["join_rules"].as_str(), r["creator"].as_str()),
        (Some("public"), Some(alice.user_id.as_str())),
        "{r}"
    );
    let (_, r) = s
        .get(
            &format!("/_synapse/admin/v1/rooms/{}/members", enc(&room)),
            Some(&ops.token),
        )
        .await;
    assert_eq!(r["members"], json!([alice.user_id]), "{r}");
    let (_, r) = s
        .get(
            &format!("/_synapse/admin/v1/rooms/{}/state", enc(&room)),
            Some(&ops.token),
        )
        .await;
    assert!(
        r["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.name")),
        "{r}"
    );
    let (st, _) = s
        .get("/_synapse/admin/v1/rooms/!nope:localhost", Some(&ops.token))
        .await;
    assert_eq!(st, 404);

    // Presence view: alice sets busy with a message; the view shows it and her device.
    let (st, r) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.token),
            json!({ "presence": "online", "status_msg": "in a meeting" }),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = s
        .get(
            &format!("/_pulse/admin/v1/presence/{}", enc(&alice.user_id)),
            Some(&ops.token),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["effective"]["status_msg"], "in a meeting", "{r}");
    assert_eq!(r["overridden"], false, "{r}");
    assert!(r["audience"].is_object() || r["audience"].is_array(), "{r}");
}

/// How many of `bodies` are in the room's history as `token` sees it.
async fn history(s: &TestServer, token: &str, room: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
            enc(room)
        );
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (st, r) = s.get(&path, Some(token)).await;
        assert_eq!(st, 200, "{r}");
        let chunk = r["chunk"].as_array().cloned().unwrap_or_default();
        for e in &chunk {
            if let Some(b) = e["content"]["body"].as_str() {
                out.push(b.to_owned());
            }
        }
        match r["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_write_load_restores_every_acknowledged_write() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice").await;
    let ops = s.register_admin("ops").await;
    let room = s
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    // A media file, to be in the backup too.
    let resp = reqwest::Client::new()
        .post(s.url("/_matrix/media/v3/upload?filename=a.txt"))
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body("backed up bytes")
        .send()
        .await
        .expect("upload");
    let upload: Value = resp.json().await.expect("json");
    let mxc = upload["content_uri"].as_str().expect("mxc").to_owned();

    // Writers send messages until told to stop; each records what got a 200, and when.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(
        Vec::<(String, std::time::Instant)>::new(),
    ));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (stop, acked) = (stop.clone(), acked.clone());
        let (url, token, room) = (s.base.clone(), alice.token.clone(), room.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("w{w}-{n}");
                let r = http
                    .put(format!(
                        "{url}/_matrix/client/v3/rooms/{}/send/m.room.message/t{w}-{n}",
                        enc(&room)
                    ))
                    .bearer_auth(&token)
                    .json(&json!({ "msgtype": "m.text", "body": body }))
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        eprintln!("send: {}", r.status());
                        false
                    }
                    Err(e) => {
                        eprintln!("send: {e}");
                        false
                    }
                };
                if ok {
                    acked
                        .lock()
                        .expect("lock")
                        .push((body, std::time::Instant::now()));
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let backup_dir = s.dir.path().join("backup-1");
    let asked = std::time::Instant::now();
    let out = std::process::Command::new(common::BIN)
        .args(["backup", "--config"])
        .arg(s.config_path())
        .arg(&backup_dir)
        .env("PULSE_ADMIN_TOKEN", &ops.token)
        .output()
        .expect("run pulse backup");
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    let before: Vec<&String> = acked
        .iter()
        .filter(|(_, t)| *t < asked)
        .map(|(b, _)| b)
        .collect();
    assert!(
        before.len() >= 10,
        "the load ran before the backup: {}",
        before.len()
    );
    assert!(
        acked.len() > before.len(),
        "writes went on during the backup"
    );

    // The backup goes into a new directory only, and not without a token.
    let again = std::process::Command::new(common::BIN)
        .args(["backup", "--config"])
        .arg(s.config_path())
        .arg(&backup_dir)
        .env("PULSE_ADMIN_TOKEN", &ops.token)
        .output()
        .expect("run pulse backup");
    assert!(!again.status.success(), "{again:?}");
    let no_token = std::process::Command::new(common::BIN)
        .args(["backup", "--config"])
        .arg(s.config_path())
        .arg(s.dir.path().join("backup-2"))
        .env("PULSE_ADMIN_TOKEN", &alice.token)
        .output()
        .expect("run pulse backup");
    assert!(
        !no_token.status.success(),
        "a non-admin cannot back up: {no_token:?}"
    );
    s.terminate();

    // Restore into a fresh data directory: a config pointing at it, same server name.
    let restored_data = s.dir.path().join("restored");
    let config = std::fs::read_to_string(s.config_path()).expect("config");
    let old_data = s.dir.path().join("data");
    std::fs::write(
        s.config_path(),
        config.replace(
            &old_data.display().to_string(),
            &restored_data.display().to_string(),
        ),
    )
    .expect("config");
    let restore = std::process::Command::new(common::BIN)
        .args(["restore", "--config"])
        .arg(s.config_path())
        .arg(&backup_dir)
        .output()
        .expect("run pulse restore");
    assert!(restore.status.success(), "{restore:?}");
    // A second restore over the now non-empty directory is refused.
    let twice = std::process::Command::new(common::BIN)
        .args(["restore", "--config"])
        .arg(s.config_path())
        .arg(&backup_dir)
        .output()
        .expect("run pulse restore");
    assert!(!twice.status.success(), "{twice:?}");
    s.start_again().await;
    let alice = s.login("alice").await;
    let found = history(&s, &alice.token, &room).await;
    let missing: Vec<&&String> = before.iter().filter(|b| !found.contains(b)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup but not restored: {missing:?}"
    );
    let media = reqwest::Client::new()
        .get(s.url(&format!(
            "/_matrix/client/v1/media/download/{}",
            mxc.trim_start_matches("mxc://")
        )))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("download");
    assert_eq!(media.status().as_u16(), 200);
    assert_eq!(media.text().await.expect("body"), "backed up bytes");
}

#[tokio::test]
async fn server_notices_reach_a_user_in_one_room_they_cannot_reject() {
    let s = TestServer::start_with(
        "[server_notices]\nsystem_mxid_localpart = \"notices\"\nroom_name = \"Server Alert\"\n",
    )
    .await;
    let alice = s.register("alice").await;
    let ops = s.register_admin("ops").await;
    let notice = |txn: Option<&str>| {
        let (s, token) = (&s, ops.token.clone());
        let path = match txn {
            Some(t) => format!("/_synapse/admin/v1/send_server_notice/{t}"),
            None => "/_synapse/admin/v1/send_server_notice".to_owned(),
        };
        let method = if txn.is_some() { "PUT" } else { "POST" };
        async move {
            let (st, r) = s
                .req(
                    method,
                    &path,
                    Some(&token),
                    Some(json!({
                        "user_id": "@alice:localhost",
                        "content": { "msgtype": "m.text", "body": "maintenance at noon" },
                    })),
                )
                .await;
            assert_eq!(st, 200, "{r}");
            r["event_id"].as_str().expect("event_id").to_owned()
        }
    };
    // Not an admin: 403. Nobody can log in as the system user.
    let (st, r) = s
        .post(
            "/_synapse/admin/v1/send_server_notice",
            Some(&alice.token),
            json!({ "user_id": "@alice:localhost", "content": {} }),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{r}"
    );
    let (st, _) = s
        .post("/_matrix/client/v3/login", None, json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "notices" }, "password": "" }))
        .await;
    assert_eq!(st, 403);

    let first = notice(None).await;
    let (_, r) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    let invites = r["rooms"]["invite"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(invites.len(), 1, "{r}");
    let (room, invite) = invites.into_iter().next().expect("invite");
    let events = invite["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .all(|e| e["sender"] == "@notices:localhost" || e["state_key"] == "@alice:localhost"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Server Alert"),
        "{events:?}"
    );
    // The invite cannot be rejected; joining shows the notice; then alice may leave.
    let (st, r) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (st, r["errcode"].as_str()),
        (403, Some("M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")),
        "{r}"
    );
    let (st, r) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&first)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (st, r["content"]["body"].as_str()),
        (200, Some("maintenance at noon")),
        "{r}"
    );
    let (_, r) = s
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.tag",
                enc(&alice.user_id),
                enc(&room)
            ),
            Some(&alice.token),
        )
        .await;
    assert!(r["tags"]["m.server_notice"].is_object(), "{r}");
    let (st, r) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    // The next notice re-invites her to the same room; a transaction ID makes it idempotent.
    notice(None).await;
    let (_, r) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    let again: Vec<String> = r["rooms"]["invite"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(again, vec![room.clone()], "{r}");
    let a = notice(Some("t1")).await;
    let b = notice(Some("t1")).await;
    assert_eq!(a, b);
    // Only local users, who exist.
    let (st, _) = s
        .post(
            "/_synapse/admin/v1/send_server_notice",
            Some(&ops.token),
            json!({ "user_id": "@ghost:localhost", "content": {} }),
        )
        .await;
    assert_eq!(st, 404);
}
