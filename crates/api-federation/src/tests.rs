use std::sync::Arc;

use axum::body::Body;
use federation_client::FederationError;
use federation_client::keys::KeySource;
use futures::future::BoxFuture;
use ruma::serde::Base64;
use ruma::signatures::Ed25519KeyPair;
#[allow(unused_imports)]
use ruma::signatures::KeyPair as _;
use server_keys::ServerKeys;
use tower::ServiceExt as _;

use super::*;

/// The origin `a.test` with one key that is valid until `valid_until`.
struct FakeKeys {
    origin: ServerKeys,
    valid_until: u64,
}

impl KeySource for FakeKeys {
    fn key_at<'a>(
        &'a self,
        server: &'a str,
        key_id: &'a str,
        at: u64,
    ) -> BoxFuture<'a, federation_client::Result<Base64>> {
        Box::pin(async move {
            if server == "a.test" && key_id == self.origin.key_id() && at <= self.valid_until {
                Ok(Base64::new(self.origin.pair().public_key().to_vec()))
            } else {
                Err(FederationError::Config(format!(
                    "no key {key_id} of {server} valid at {at}"
                )))
            }
        })
    }
}

fn setup(valid_until: u64) -> (Router, ServerKeys) {
    let origin = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    let us = ServerKeys::generate_ephemeral("b.test".try_into().unwrap()).unwrap();
    let state = Arc::new(FederationState {
        keys: us,
        membership: None,
        remote_keys: Arc::new(FakeKeys {
            origin: origin.clone(),
            valid_until,
        }),
    });
    (router(state), origin)
}

/// Signs like a real sender (ruma's X-Matrix signer).
fn signed(
    origin: &ServerKeys,
    destination: &str,
    method: &str,
    uri: &str,
    body: &'static str,
) -> http::Request<Body> {
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

async fn call(app: &Router, req: http::Request<Body>) -> (u16, serde_json::Value) {
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
            "PUT",
            "/_matrix/federation/v1/nothing/x%20y?a=1",
            r#"{"k":1}"#,
        ),
    )
    .await;
    // Authenticated, then unrecognized: the signature was accepted.
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED")),
        "{body}"
    );
}

#[tokio::test]
async fn missing_bad_wrong_destination_and_expired_are_refused() {
    let (app, origin) = setup(FAR);
    let plain = http::Request::builder()
        .uri("/_matrix/federation/v1/x")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, plain).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED"))
    );

    // Signed for one URI, sent to another: the signature covers the raw URI.
    let mut req = signed(&origin, "b.test", "GET", "/_matrix/federation/v1/x", "");
    *req.uri_mut() = "/_matrix/federation/v1/y".parse().unwrap();
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
        signed(&forger, "b.test", "GET", "/_matrix/federation/v1/x", ""),
    )
    .await;
    assert_eq!(status, 401);

    let (status, body) = call(
        &app,
        signed(&origin, "c.test", "GET", "/_matrix/federation/v1/x", ""),
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
        signed(&origin, "b.test", "GET", "/_matrix/federation/v1/x", ""),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("key"), "{body}");
}
