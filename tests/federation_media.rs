//! Two real pulse binaries (tests/common/federating.rs): media of one server downloaded and
//! thumbnailed by a user of the other through the federation media endpoints, cached so it
//! is still served when its origin is down; unknown and unreachable media answered apart.
mod common;

use common::federating::Server;

/// A 16×16 RGB PNG.
fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 99]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

/// GET with a token: (status, content type, content disposition, body).
async fn get(s: &Server, path: &str, token: &str) -> (u16, String, String, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (st, ct, cd) = (
        r.status().as_u16(),
        h("content-type"),
        h("content-disposition"),
    );
    (st, ct, cd, r.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn remote_media_is_fetched_over_federation_and_cached() {
    let mut a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;

    let r = reqwest::Client::new()
        .post(a.url("/_matrix/media/v3/upload?filename=pic.png"))
        .bearer_auth(&alice.token)
        .header("content-type", "image/png")
        .body(png())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    let mxc = v["content_uri"].as_str().expect("content_uri").to_owned();
    let (server, id) = mxc
        .strip_prefix("mxc://")
        .and_then(|r| r.split_once('/'))
        .expect("mxc");
    assert_eq!(server, a.name());

    // Bob, on the other server, downloads it: same bytes, type and name.
    let path = format!("/_matrix/client/v1/media/download/{server}/{id}");
    let (st, ct, cd, body) = get(&b, &path, &bob.token).await;
    assert_eq!((st, ct.as_str()), (200, "image/png"));
    assert_eq!(body, png());
    assert!(cd.contains("pic.png"), "{cd}");

    // A thumbnail made by the origin, passed on.
    let thumb =
        format!("/_matrix/client/v1/media/thumbnail/{server}/{id}?width=8&height=8&method=scale");
    let (st, ct, _, t) = get(&b, &thumb, &bob.token).await;
    assert_eq!((st, ct.as_str()), (200, "image/png"));
    let img = image::load_from_memory(&t).expect("png");
    assert_eq!((img.width(), img.height()), (8, 8));
    let (_, _, _, origin_thumb) = get(&a, &thumb, &alice.token).await;
    assert_eq!(t, origin_thumb, "the origin's thumbnail, not a new one");

    // Unknown on the origin: 404 passed on; not a media ID at all: 404 without asking.
    let (st, _, _, _) = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{server}/nosuchmedia"),
        &bob.token,
    )
    .await;
    assert_eq!(st, 404);
    let (st, _, _, _) = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{server}/bad%2Fid"),
        &bob.token,
    )
    .await;
    assert_eq!(st, 404);
    // Legacy endpoint with allow_remote=false does not ask.
    let (st, _, _, _) = get(
        &b,
        &format!("/_matrix/media/v3/download/{server}/{id}?allow_remote=false"),
        &bob.token,
    )
    .await;
    assert_eq!(st, 404);

    // The origin goes away: what was fetched is still served; what was not is 502.
    a.kill();
    let (st, _, _, body) = get(&b, &path, &bob.token).await;
    assert_eq!((st, body), (200, png()));
    let (st, _, _, t2) = get(&b, &thumb, &bob.token).await;
    assert_eq!((st, t2), (200, t));
    let (st, _, _, body) = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{server}/other"),
        &bob.token,
    )
    .await;
    assert_eq!(st, 502, "{}", String::from_utf8_lossy(&body));
}
