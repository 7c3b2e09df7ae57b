//! Two real pulse binaries on loopback with self-signed TLS: key publication, key fetching
//! between servers and X-Matrix authentication of federation requests.
//!
//! The test signs as server A with A's stored key (read from A's data dir while A is stopped,
//! then A is restarted with the same key), so B must fetch A's key from the running A over TLS.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use federation_client::{FederationClient, FederationConfig};

const BIN: &str = env!("CARGO_BIN_EXE_pulse");

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn name(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn spawn(dir: &tempfile::TempDir, port: u16) -> Child {
    let config = format!(
        "server_name = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[listeners.tls]\n[federation]\nverify_tls = false\nip_range_allowlist = [\"127.0.0.0/8\"]\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("pulse.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pulse")
}

async fn wait_up(port: u16) {
    let http = insecure();
    for _ in 0..200 {
        if http
            .get(format!(
                "https://127.0.0.1:{port}/_matrix/federation/v1/version"
            ))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pulse on {port} did not start");
}

fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = spawn(&dir, port);
    wait_up(port).await;
    Server { child, port, dir }
}

fn test_config() -> FederationConfig {
    FederationConfig {
        verify_tls: false,
        ip_range_allowlist: vec!["127.0.0.0/8".parse().unwrap()],
        ..FederationConfig::default()
    }
}

/// Stops `a`, reads its signing key, restarts it with the same data dir.
async fn keys_of(a: &mut Server) -> server_keys::ServerKeys {
    let _ = a.child.kill();
    let _ = a.child.wait();
    let keys = {
        let db = storage::Db::open(&a.dir.path().join("data"), false).unwrap();
        server_keys::ServerKeys::load_or_generate(&db, name(a.port).try_into().unwrap()).unwrap()
    };
    a.child = spawn(&a.dir, a.port);
    wait_up(a.port).await;
    keys
}

#[tokio::test]
async fn servers_fetch_keys_and_authenticate_each_other() {
    let mut a = start().await;
    let b = start().await;
    let a_keys = keys_of(&mut a).await;
    let as_a = FederationClient::new(test_config(), a_keys.clone()).unwrap();

    // A's published key document is the key A signs with.
    let doc = as_a
        .get_unsigned(&name(a.port), "/_matrix/key/v2/server")
        .await
        .unwrap();
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["server_name"], name(a.port));
    assert_eq!(
        doc.body["verify_keys"][a_keys.key_id()]["key"],
        a_keys.public_key_base64()
    );

    // A signed request from A to B: B fetches A's key from A and accepts the signature
    // (the endpoint itself is not served yet, hence 404 M_UNRECOGNIZED after authentication).
    let resp = as_a
        .request(
            http::Method::GET,
            &name(b.port),
            "/_matrix/federation/v1/nothing?x=1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (resp.status, resp.body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED")),
        "{}",
        resp.body
    );

    // Wrong destination: signed for A, sent to B.
    let header = as_a
        .authorization(
            &http::Method::GET,
            &name(a.port).try_into().unwrap(),
            "/_matrix/federation/v1/nothing",
            b"",
        )
        .unwrap();
    let http = insecure();
    let r = http
        .get(format!(
            "https://127.0.0.1:{}/_matrix/federation/v1/nothing",
            b.port
        ))
        .header("authorization", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    assert!(
        body["error"].as_str().unwrap().contains("destination"),
        "{body}"
    );

    // Bad signature: signed for one URI, sent with another.
    let header = as_a
        .authorization(
            &http::Method::GET,
            &name(b.port).try_into().unwrap(),
            "/_matrix/federation/v1/other",
            b"",
        )
        .unwrap();
    let r = http
        .get(format!(
            "https://127.0.0.1:{}/_matrix/federation/v1/nothing",
            b.port
        ))
        .header("authorization", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // An unknown key ID of A (A does not publish it): refused with a clear error.
    let stranger =
        server_keys::ServerKeys::generate_ephemeral(name(a.port).try_into().unwrap()).unwrap();
    let as_stranger = FederationClient::new(test_config(), stranger).unwrap();
    let resp = as_stranger
        .request(
            http::Method::GET,
            &name(b.port),
            "/_matrix/federation/v1/nothing",
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert!(
        resp.body["error"].as_str().unwrap().contains("key"),
        "{}",
        resp.body
    );
}
