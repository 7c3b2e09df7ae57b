//! The media repository through the real binary: upload (size limit, content type, file
//! name), authenticated and legacy download with the safety headers, config, thumbnails
//! (scale, crop, refused for non-images), unknown and unreachable remote media, and files surviving a
//! restart.
mod common;

use common::TestServer;
use serde_json::Value;

/// An 8×4 RGB PNG.
const PNG_HEX: &str = "89504e470d0a1a0a0000000d49484452000000080000000408020000003cafe9a70000004449444154789c0dc93101c0400c03312309122309128f87e291184910b55a258911162b229ea838219931366b629ea939ff1126386c4878a1e1f24799e2b225e595962b1fbb2e2861735b09e00000000049454e44ae426082";

fn png() -> Vec<u8> {
    (0..PNG_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PNG_HEX[i..i + 2], 16).expect("hex"))
        .collect()
}

/// (status, headers, body bytes).
async fn fetch(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = reqwest::Client::new().request(m, s.url(path)).body(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    let resp = rb.send().await.expect("sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.expect("body").to_vec())
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

/// Upload and return the media ID (mxc://localhost/<id>).
async fn upload(s: &TestServer, token: &str, ct: &str, name: &str, body: Vec<u8>) -> String {
    let (st, _, b) = fetch(
        s,
        "POST",
        &format!("/_matrix/media/v3/upload?filename={name}"),
        Some(token),
        Some(ct),
        body,
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let uri = json(&b)["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    uri.strip_prefix("mxc://localhost/")
        .expect("local mxc")
        .to_owned()
}

#[tokio::test]
async fn upload_download_and_thumbnails() {
    let mut s = TestServer::start_with("[media]\nmax_upload_bytes = 100000\n").await;
    let alice = s.register("alice").await;
    let t = alice.token.as_str();

    let (st, _, b) = fetch(
        &s,
        "GET",
        "/_matrix/client/v1/media/config",
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (st, json(&b)["m.upload.size"].as_u64()),
        (200, Some(100_000))
    );
    let (st, _, _) = fetch(
        &s,
        "GET",
        "/_matrix/client/v1/media/config",
        None,
        None,
        vec![],
    )
    .await;
    assert_eq!(st, 401);

    let id = upload(&s, t, "text/plain", "notes.txt", b"hello media".to_vec()).await;
    let (st, h, b) = fetch(
        &s,
        "GET",
        &format!("/_matrix/client/v1/media/download/localhost/{id}"),
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(b, b"hello media");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["content-disposition"], "inline; filename=\"notes.txt\"");
    assert!(
        h["content-security-policy"]
            .to_str()
            .expect("csp")
            .starts_with("sandbox")
    );
    assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
    // Authenticated media needs a token; the legacy endpoint does not.
    let auth_path = format!("/_matrix/client/v1/media/download/localhost/{id}");
    assert_eq!(
        fetch(&s, "GET", &auth_path, None, None, vec![]).await.0,
        401
    );
    let (st, h, b) = fetch(
        &s,
        "GET",
        &format!("/_matrix/media/v3/download/localhost/{id}/other%20name.txt"),
        None,
        None,
        vec![],
    )
    .await;
    assert_eq!((st, b.as_slice()), (200, b"hello media".as_slice()));
    assert_eq!(
        h["content-disposition"],
        "inline; filename=\"other name.txt\""
    );

    // HTML is never inline.
    let html = upload(
        &s,
        t,
        "text/html",
        "x.html",
        b"<script>alert(1)</script>".to_vec(),
    )
    .await;
    let (_, h, _) = fetch(
        &s,
        "GET",
        &format!("/_matrix/media/v3/download/localhost/{html}"),
        None,
        None,
        vec![],
    )
    .await;
    assert!(
        h["content-disposition"]
            .to_str()
            .expect("cd")
            .starts_with("attachment")
    );

    // Too large: 413 M_TOO_LARGE.
    let (st, _, b) = fetch(
        &s,
        "POST",
        "/_matrix/media/v3/upload",
        Some(t),
        Some("application/octet-stream"),
        vec![0; 100_001],
    )
    .await;
    assert_eq!(
        (st, json(&b)["errcode"].as_str()),
        (413, Some("M_TOO_LARGE"))
    );
    let (st, _, _) = fetch(&s, "POST", "/_matrix/media/v3/upload", None, None, vec![1]).await;
    assert_eq!(st, 401);

    // Unknown media is 404; media of a server that cannot be reached is 502 (fetching it
    // over federation: tests/federation_media.rs).
    for (path, want) in [
        (
            "/_matrix/client/v1/media/download/localhost/nope".to_owned(),
            (404, "M_NOT_FOUND"),
        ),
        (
            format!("/_matrix/client/v1/media/download/elsewhere.invalid/{id}"),
            (502, "M_UNKNOWN"),
        ),
    ] {
        let (st, _, b) = fetch(&s, "GET", &path, Some(t), None, vec![]).await;
        assert_eq!(
            (st, json(&b)["errcode"].as_str()),
            (want.0, Some(want.1)),
            "{path}"
        );
    }

    // Thumbnails of a PNG: scaled inside the box (4:2 keeps its ratio), cropped to fill it.
    let img = upload(&s, t, "image/png", "pic.png", png()).await;
    let thumb = |q: &str| format!("/_matrix/client/v1/media/thumbnail/localhost/{img}?{q}");
    let (st, h, b) = fetch(
        &s,
        "GET",
        &thumb("width=4&height=4&method=scale"),
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(png_size(&b), (4, 2));
    let (_, _, b) = fetch(
        &s,
        "GET",
        &thumb("width=3&height=3&method=crop"),
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!(png_size(&b), (3, 3));
    let (st, _, b) = fetch(
        &s,
        "GET",
        &format!("/_matrix/media/v3/thumbnail/localhost/{img}?width=100&height=100"),
        None,
        None,
        vec![],
    )
    .await;
    assert_eq!((st, png_size(&b)), (200, (8, 4)), "never upscaled");
    let (st, _, b) = fetch(&s, "GET", &thumb("width=0&height=4"), Some(t), None, vec![]).await;
    assert_eq!(
        (st, json(&b)["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    let (st, _, _) = fetch(
        &s,
        "GET",
        &format!("/_matrix/client/v1/media/thumbnail/localhost/{id}?width=4&height=4"),
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!(st, 400, "not an image");

    // Files and records survive kill -9.
    s.kill9_and_restart().await;
    let (st, _, b) = fetch(
        &s,
        "GET",
        &format!("/_matrix/media/v3/download/localhost/{img}"),
        None,
        None,
        vec![],
    )
    .await;
    assert_eq!((st, b), (200, png()));
}

/// Width and height from a PNG's IHDR.
fn png_size(b: &[u8]) -> (u32, u32) {
    assert!(b.len() > 24 && &b[1..4] == b"PNG", "not a PNG");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

/// Asynchronous uploads: reserve, wait, upload once, by the owner only; bounded per user.
#[tokio::test]
async fn asynchronous_uploads() {
    let mut s = TestServer::start_with("[media]\nmax_pending_uploads = 3\n").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let t = alice.token.as_str();

    let create = |token: String| {
        let s = &s;
        async move {
            let (st, _, b) = fetch(
                s,
                "POST",
                "/_matrix/media/v1/create",
                Some(&token),
                None,
                vec![],
            )
            .await;
            (st, json(&b))
        }
    };
    let (st, v) = create(t.to_owned()).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["unused_expires_at"].as_u64().is_some_and(|e| e > 0),
        "{v}"
    );
    let id = v["content_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("mxc://localhost/"))
        .expect("local mxc")
        .to_owned();

    // Not uploaded yet: a short wait ends in 504 M_NOT_YET_UPLOADED.
    let (st, _, b) = fetch(
        &s,
        "GET",
        &format!("/_matrix/client/v1/media/download/localhost/{id}?timeout_ms=200"),
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (st, json(&b)["errcode"].as_str()),
        (504, Some("M_NOT_YET_UPLOADED"))
    );

    // A download that waits is answered once the content arrives.
    let url = s.url(&format!(
        "/_matrix/client/v1/media/download/localhost/{id}?timeout_ms=30000"
    ));
    let token = t.to_owned();
    let waiting = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        (r.status().as_u16(), r.bytes().await.expect("body").to_vec())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let put_path = format!("/_matrix/media/v3/upload/localhost/{id}?filename=a.png");
    // Only the user who reserved it may upload.
    let (st, _, b) = fetch(
        &s,
        "PUT",
        &put_path,
        Some(&bob.token),
        Some("image/png"),
        png(),
    )
    .await;
    assert_eq!(
        (st, json(&b)["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    let (st, _, b) = fetch(&s, "PUT", &put_path, Some(t), Some("image/png"), png()).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let (st, body) = waiting.await.expect("join");
    assert_eq!((st, body), (200, png()));
    // Once only.
    let (st, _, b) = fetch(&s, "PUT", &put_path, Some(t), Some("image/png"), png()).await;
    assert_eq!(
        (st, json(&b)["errcode"].as_str()),
        (409, Some("M_CANNOT_OVERWRITE_MEDIA"))
    );
    // Unknown IDs are 404 at once, for upload and download.
    let (st, _, _) = fetch(
        &s,
        "PUT",
        "/_matrix/media/v3/upload/localhost/nosuchid",
        Some(t),
        Some("text/plain"),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(st, 404);

    // Three unexpired reservations at most.
    for _ in 0..3 {
        assert_eq!(create(t.to_owned()).await.0, 200);
    }
    let (st, v) = create(t.to_owned()).await;
    assert_eq!(
        (st, v["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED")),
        "{v}"
    );
    assert_eq!(
        create(bob.token.clone()).await.0,
        200,
        "bob has his own allowance"
    );

    // The uploaded content survives a restart, with its name.
    s.kill9_and_restart().await;
    let (st, h, b) = fetch(
        &s,
        "GET",
        &format!("/_matrix/client/v1/media/download/localhost/{id}"),
        Some(t),
        None,
        vec![],
    )
    .await;
    assert_eq!((st, b), (200, png()));
    assert!(
        h["content-disposition"]
            .to_str()
            .is_ok_and(|d| d.contains("a.png"))
    );
}
