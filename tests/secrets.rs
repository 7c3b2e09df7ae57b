//! Secrets at rest and in logs (issue 19 items 1 and 7): access tokens are stored only as
//! their SHA-256, a database of the old layout (tokens in clear) migrates at start-up and
//! its tokens keep working, and passwords, tokens and the registration shared secret never
//! reach the log, even at `debug`.
mod common;

use std::path::Path;

use common::TestServer;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use storage::{Batch, Cf, Db};

const V3: &str = "/_matrix/client/v3";
/// The shared secret `tests/common`'s config sets.
const SHARED_SECRET: &str = "test-secret";

/// Paths of the files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .expect("read")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

async fn whoami(s: &TestServer, token: &str) -> u16 {
    s.get(&format!("{V3}/account/whoami"), Some(token)).await.0
}

/// Rewrite the stopped server's database into schema version 1: `Tokens` keyed by the
/// token in clear, device records listing their tokens in clear (what Pulse wrote before
/// tokens were hashed).
fn downgrade_to_v1(data: &Path, tokens: &[&str]) {
    let db = Db::open_migrating(data, false, &[]).expect("open the stopped server's db");
    let mut b = Batch::new();
    for token in tokens {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let session = db
            .get(Cf::Tokens, hash)
            .expect("read")
            .expect("the token's session is stored under its hash");
        b.delete(Cf::Tokens, hash);
        b.put(Cf::Tokens, token.as_bytes(), session);
    }
    for (key, record) in db.scan_prefix(Cf::Devices, []).expect("scan") {
        let mut record: Value = serde_json::from_slice(&record).expect("device json");
        let hashes = record["token_hashes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let clear: Vec<&str> = tokens
            .iter()
            .copied()
            .filter(|t| {
                let h = hex::encode(Sha256::digest(t.as_bytes()));
                hashes.iter().any(|x| x.as_str() == Some(h.as_str()))
            })
            .collect();
        let obj = record.as_object_mut().expect("object");
        obj.remove("token_hashes");
        obj.insert("tokens".into(), json!(clear));
        b.put_json(Cf::Devices, key, &record);
    }
    b.put(Cf::Meta, "schema_version", 1u64.to_be_bytes().to_vec());
    db.write(b).expect("write the v1 layout");
    db.flush().expect("flush");
    // The v1 layout holds each token in clear as its key. (Checked through the storage API:
    // a scan of the files for the bytes failed once under CI load — SST blocks are
    // compressed — so the files are only scanned for what must be gone after migrating.)
    for token in tokens {
        assert!(
            db.get(Cf::Tokens, token.as_bytes())
                .expect("read")
                .is_some(),
            "the v1 database must hold the token in clear"
        );
    }
}

#[tokio::test]
async fn plain_tokens_of_an_old_database_are_migrated_and_keep_working() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (status, login) = s
        .post(
            &format!("{V3}/login"),
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let second = login["access_token"].as_str().expect("token").to_owned();
    s.terminate();
    let data = s.dir.path().join("data");
    assert!(files_containing(&data, alice.token.as_bytes()).is_empty());

    downgrade_to_v1(&data, &[&alice.token, &second]);

    s.start_again().await;
    assert_eq!(whoami(&s, &alice.token).await, 200);
    assert_eq!(whoami(&s, &second).await, 200);
    for t in [&alice.token, &second] {
        assert_eq!(
            files_containing(&data, t.as_bytes()),
            Vec::<String>::new(),
            "the token in clear survived the migration"
        );
    }
    // Logging out a migrated token revokes it (the device record lists its hash).
    let (status, _) = s
        .post(&format!("{V3}/logout"), Some(&second), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(whoami(&s, &second).await, 401);
    assert_eq!(whoami(&s, &alice.token).await, 200);

    // And it stays migrated across a restart.
    s.terminate();
    s.start_again().await;
    assert_eq!(whoami(&s, &alice.token).await, 200);
}

fn shared_secret_mac(nonce: &str, user: &str, password: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).expect("key");
    mac.update(format!("{nonce}\0{user}\0{password}\0notadmin").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn no_password_token_or_shared_secret_in_a_debug_log() {
    let s = TestServer::start_logging("", "debug").await;
    let (pw1, pw2, pw3) = (
        "Reg1stration-Passw0rd-q7",
        "Changed-Passw0rd-k2",
        "SharedSecret-User-Passw0rd-z9",
    );
    let mut secrets: Vec<String> = vec![pw1.into(), pw2.into(), pw3.into(), SHARED_SECRET.into()];

    let (status, reg) = s
        .post(
            &format!("{V3}/register"),
            None,
            json!({"username": "bob", "password": pw1, "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_eq!(status, 200, "{reg}");
    let token = reg["access_token"].as_str().expect("token").to_owned();
    secrets.push(token.clone());

    let login_body = |pw: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": pw});
    let (status, login) = s.post(&format!("{V3}/login"), None, login_body(pw1)).await;
    assert_eq!(status, 200, "{login}");
    secrets.push(login["access_token"].as_str().expect("token").to_owned());
    // A failed login logs too: the wrong password must not appear either.
    let wrong = "Wrong-Passw0rd-x4";
    secrets.push(wrong.into());
    let (status, _) = s
        .post(&format!("{V3}/login"), None, login_body(wrong))
        .await;
    assert_eq!(status, 403);

    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "@bob:localhost"}, "password": pw1});
    let (status, body) = s
        .post(
            &format!("{V3}/account/password"),
            Some(&token),
            json!({"new_password": pw2, "auth": auth, "logout_devices": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.post(&format!("{V3}/login"), None, login_body(pw2)).await;
    assert_eq!(status, 200);

    let (status, body) = s.get("/_synapse/admin/v1/register", None).await;
    assert_eq!(status, 200, "{body}");
    let nonce = body["nonce"].as_str().expect("nonce").to_owned();
    let (status, body) = s
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({"nonce": nonce, "username": "carol", "password": pw3,
                   "mac": shared_secret_mac(&nonce, "carol", pw3), "admin": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    secrets.push(body["access_token"].as_str().expect("token").to_owned());
    // A request that carries a token in the query string instead of the header.
    let (status, _) = s
        .get(&format!("{V3}/account/whoami?access_token={token}"), None)
        .await;
    assert_eq!(status, 200);

    let log = std::fs::read_to_string(s.log_path()).expect("read the log");
    // The log is at debug level and saw these requests (else this test proves nothing).
    assert!(log.contains("DEBUG"), "no debug lines in the log:\n{log}");
    for who in ["@bob:localhost", "@carol:localhost"] {
        assert!(
            log.contains(who),
            "the log missed {who}'s registration:\n{log}"
        );
    }
    for secret in &secrets {
        let hits: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(hits.is_empty(), "{secret:?} is in the log: {hits:#?}");
    }
}
