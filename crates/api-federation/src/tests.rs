use std::sync::Arc;

use axum::body::Body;
use federation_client::FederationError;
use federation_client::keys::{KeySource, now_ms};
use futures::future::BoxFuture;
use ruma::serde::Base64;
use ruma::signatures::Ed25519KeyPair;
#[allow(unused_imports)]
use ruma::signatures::KeyPair as _;
use server_keys::ServerKeys;
use tower::ServiceExt as _;

use super::*;

/// The origin `a.test`: its current key valid until `valid_until`, plus optional extra keys
/// (e.g. an old key) with their own validity ends.
pub(crate) struct FakeKeys {
    pub origin: ServerKeys,
    pub valid_until: u64,
    pub extra: Vec<(ServerKeys, u64)>,
}

impl KeySource for FakeKeys {
    fn key_at<'a>(
        &'a self,
        server: &'a str,
        key_id: &'a str,
        at: u64,
    ) -> BoxFuture<'a, federation_client::Result<Base64>> {
        Box::pin(async move {
            let known = std::iter::once((&self.origin, self.valid_until))
                .chain(self.extra.iter().map(|(k, v)| (k, *v)));
            for (k, until) in known {
                if server == k.server_name().as_str() && key_id == k.key_id() && at <= until {
                    return Ok(Base64::new(k.pair().public_key().to_vec()));
                }
            }
            Err(FederationError::Config(format!(
                "no key {key_id} of {server} valid at {at}"
            )))
        })
    }

    fn key_documents<'a>(
        &'a self,
        server: &'a str,
        _minimum: u64,
    ) -> BoxFuture<'a, Vec<serde_json::Value>> {
        Box::pin(async move {
            if server == "a.test" {
                vec![serde_json::to_value(self.origin.key_document(now_ms()).unwrap()).unwrap()]
            } else {
                Vec::new()
            }
        })
    }
}

struct NoWake;
impl presence_service::SyncWaker for NoWake {
    fn wake_users(&self, _: &[&ruma::UserId], _: u64) {}
}

/// Feeds memberships into presence's audience index, as `pulse` does.
struct Audience(Arc<presence_service::PresenceService>);
impl rooms::MembershipObserver for Audience {
    fn membership_changed(
        &self,
        room: &ruma::RoomId,
        user: &ruma::UserId,
        membership: Option<rooms::Membership>,
    ) {
        self.0
            .membership_changed(room, user, membership == Some(rooms::Membership::Join));
    }
}

#[derive(Default)]
pub(crate) struct Contacted(pub std::sync::Mutex<Vec<String>>);
impl PeerObserver for Contacted {
    fn server_contacted(&self, server: &ruma::ServerName) {
        self.0.lock().unwrap().push(server.to_string());
    }
}

/// A full federation state for `b.test` over a temporary database.
pub(crate) struct Fx {
    pub _dir: tempfile::TempDir,
    pub app: Router,
    pub state: Arc<FederationState>,
    pub origin: ServerKeys,
    pub contacted: Arc<Contacted>,
}

pub(crate) fn fixture_with(keys: FakeKeys) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(storage::Db::open(dir.path(), false).unwrap());
    let name: ruma::OwnedServerName = "b.test".try_into().unwrap();
    let us = ServerKeys::load_or_generate(&db, name.clone()).unwrap();
    let rooms = Arc::new(rooms::RoomService::new(db.clone(), name.clone()).unwrap());
    let presence = presence_service::PresenceService::open(
        db.clone(),
        presence_service::PresenceServiceConfig::default(),
        Arc::new(NoWake),
    )
    .unwrap();
    presence.set_server_name(name.clone());
    rooms.set_membership_observer(Arc::new(Audience(presence.clone())));
    let ephemeral = ephemeral::EphemeralService::new(db.clone());
    let accounts = Arc::new(accounts::AccountService::new(
        db.clone(),
        name,
        accounts::PasswordHashing::default(),
    ));
    let client = federation_client::FederationClient::new(Default::default(), us.clone()).unwrap();
    let origin = keys.origin.clone();
    let contacted = Arc::new(Contacted::default());
    let state = Arc::new(
        FederationState::new(
            us,
            Arc::new(keys),
            rooms,
            presence,
            ephemeral,
            accounts,
            client,
        )
        .with_peer_observer(contacted.clone()),
    );
    Fx {
        _dir: dir,
        app: router(state.clone()),
        state,
        origin,
        contacted,
    }
}

fn setup(valid_until: u64) -> (Router, ServerKeys) {
    let origin = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    let fx = fixture_with(FakeKeys {
        origin,
        valid_until,
        extra: Vec::new(),
    });
    // The temporary directory must outlive the router: leak it for these short tests.
    std::mem::forget(fx._dir);
    (fx.app, fx.origin)
}

/// Signs like a real sender (ruma's X-Matrix signer).
pub(crate) fn signed(
    origin: &ServerKeys,
    destination: &str,
    method: &str,
    uri: &str,
    body: impl Into<String>,
) -> http::Request<Body> {
    let body: String = body.into();
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body.as_bytes())
        .unwrap();
    let xm = ruma::api::federation::authentication::XMatrix::sign_http_request(
        &req,
        ruma::api::federation::authentication::XMatrixSigningInput::new(
            origin.server_name().clone(),
            destination.try_into().unwrap(),
            origin.pair(),
        ),
    )
    .unwrap();
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", xm.to_string())
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

pub(crate) async fn call(app: &Router, req: http::Request<Body>) -> (u16, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

const FAR: u64 = u64::MAX;

#[tokio::test]
async fn key_document_and_version_need_no_auth() {
    let (app, _) = setup(FAR);
    let get = |uri: &str| {
        http::Request::builder()
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    };
    let (status, doc) = call(&app, get("/_matrix/key/v2/server")).await;
    assert_eq!(status, 200);
    assert_eq!(doc["server_name"], "b.test");
    assert!(doc["old_verify_keys"].is_object());
    let (status, v) = call(&app, get("/_matrix/federation/v1/version")).await;
    assert_eq!(status, 200);
    assert_eq!(v["server"]["name"], "Pulse");
}

#[tokio::test]
async fn valid_signature_passes_authentication() {
    let (app, origin) = setup(FAR);
    let (status, body) = call(
        &app,
        signed(
            &origin,
            "b.test",
            "POST",
            "/_matrix/federation/v1/publicRooms?x=a%20b",
            r#"{"limit":1}"#,
        ),
    )
    .await;
    // An authenticated endpoint answered: the signature (over the raw URI and body) was
    // accepted.
    assert_eq!(status, 200, "{body}");
    assert!(body["chunk"].is_array(), "{body}");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_without_authentication() {
    let (app, _origin) = setup(FAR);
    for (method, uri, want) in [
        ("GET", "/_matrix/federation/unknown", 404),
        ("GET", "/_matrix/federation/v1/unknown", 404),
        ("PUT", "/_matrix/federation/v1/version", 405),
        ("PUT", "/_matrix/key/v2/query", 405),
    ] {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&app, req).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (want, Some("M_UNRECOGNIZED")),
            "{method} {uri}: {body}"
        );
    }
    // A known endpoint still needs authentication.
    let plain = http::Request::builder()
        .uri("/_matrix/federation/v1/publicRooms")
        .body(Body::empty())
        .unwrap();
    let (status, _) = call(&app, plain).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn missing_bad_wrong_destination_and_expired_are_refused() {
    let (app, origin) = setup(FAR);
    let plain = http::Request::builder()
        .uri("/_matrix/federation/v1/publicRooms")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, plain).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED"))
    );

    // Signed for one URI, sent to another: the signature covers the raw URI.
    let mut req = signed(
        &origin,
        "b.test",
        "GET",
        "/_matrix/federation/v1/publicRooms",
        "",
    );
    *req.uri_mut() = "/_matrix/federation/v1/publicRooms?limit=2"
        .parse()
        .unwrap();
    let (status, body) = call(&app, req).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // A different key pair claiming the same key ID.
    let forger = ServerKeys::from_pair(
        "a.test".try_into().unwrap(),
        Ed25519KeyPair::from_der(
            &Ed25519KeyPair::generate(),
            origin.key_id()["ed25519:".len()..].to_owned(),
        )
        .unwrap(),
    );
    let (status, _) = call(
        &app,
        signed(
            &forger,
            "b.test",
            "GET",
            "/_matrix/federation/v1/publicRooms",
            "",
        ),
    )
    .await;
    assert_eq!(status, 401);

    let (status, body) = call(
        &app,
        signed(
            &origin,
            "c.test",
            "GET",
            "/_matrix/federation/v1/publicRooms",
            "",
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("destination"),
        "{body}"
    );

    let (expired_app, origin) = setup(1);
    let (status, body) = call(
        &expired_app,
        signed(
            &origin,
            "b.test",
            "GET",
            "/_matrix/federation/v1/publicRooms",
            "",
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("key"), "{body}");
}

#[tokio::test]
async fn key_query_serves_our_keys_and_countersigned_remote_keys() {
    let (app, origin) = setup(FAR);
    let get = http::Request::builder()
        .uri("/_matrix/key/v2/query/b.test")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, get).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server_keys"][0]["server_name"], "b.test");

    let post = http::Request::builder()
        .method("POST")
        .uri("/_matrix/key/v2/query")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"server_keys":{"a.test":{},"unknown.test":{"ed25519:x":{"minimum_valid_until_ts":1}}}}"#,
        ))
        .unwrap();
    let (status, body) = call(&app, post).await;
    assert_eq!(status, 200, "{body}");
    let docs = body["server_keys"].as_array().unwrap();
    assert_eq!(docs.len(), 1, "{body}");
    assert_eq!(docs[0]["server_name"], "a.test");
    assert!(docs[0]["signatures"]["a.test"][origin.key_id()].is_string());
    assert!(
        docs[0]["signatures"]["b.test"].is_object(),
        "countersigned by us"
    );

    let too_many: serde_json::Map<String, serde_json::Value> = (0..=keys::MAX_QUERY_SERVERS)
        .map(|i| (format!("s{i}.test"), serde_json::json!({})))
        .collect();
    let post = http::Request::builder()
        .method("POST")
        .uri("/_matrix/key/v2/query")
        .body(Body::from(
            serde_json::json!({ "server_keys": too_many }).to_string(),
        ))
        .unwrap();
    let (status, _) = call(&app, post).await;
    assert_eq!(status, 400);
}
