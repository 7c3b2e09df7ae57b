//! URL previews through the real binary, against a page server on a free loopback port
//! (allowed by `[media] url_preview_ip_range_allowlist`): OpenGraph tags, the `<title>`
//! fallback, `og:image` stored as media (`mxc://`, size and dimensions), the cache (a second
//! request and an old `ts` do not fetch again), the legacy path, bad parameters, and the
//! default denylist refusing loopback (SSRF).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::header;
use axum::response::IntoResponse;
use common::{TestServer, enc};

const V1: &str = "/_matrix/client/v1/media";
const ALLOW_LOOPBACK: &str = "[media]\nurl_preview_ip_range_allowlist = [\"127.0.0.0/8\"]\n";

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// Serves `/film.html` (OpenGraph, a relative image), `/plain.html` (only a title) and
/// `/poster.png`; counts page fetches.
async fn page_server() -> (String, Arc<AtomicUsize>, Vec<u8>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let poster = png(40, 30);
    let (h, p) = (hits.clone(), poster.clone());
    let app = axum::Router::new()
        .route(
            "/film.html",
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                        r#"<html prefix="og: http://ogp.me/ns#"><head>
                        <title>The Rock (1996)</title>
                        <meta property="og:title" content="The Rock" />
                        <meta property="og:type" content="video.movie" />
                        <meta property="og:url" content="http://www.imdb.com/title/tt0117500/" />
                        <meta property="og:image" content="poster.png" />
                        </head><body></body></html>"#,
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/plain.html",
            axum::routing::get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<title>Only a title</title><p>text",
                )
                    .into_response()
            }),
        )
        .route(
            "/poster.png",
            axum::routing::get(move || {
                let p = p.clone();
                async move { ([(header::CONTENT_TYPE, "image/png")], p).into_response() }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, hits, poster)
}

#[tokio::test]
async fn a_page_is_previewed_with_its_image_stored_and_the_answer_cached() {
    let (base, hits, poster) = page_server().await;
    let s = TestServer::start_with(ALLOW_LOOPBACK).await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());
    let page = format!("{base}/film.html");
    let (st, og) = s
        .get(&format!("{V1}/preview_url?url={}", enc(&page)), t)
        .await;
    assert_eq!(st, 200, "{og}");
    assert_eq!(og["og:title"], "The Rock");
    assert_eq!(og["og:type"], "video.movie");
    assert_eq!(og["og:url"], "http://www.imdb.com/title/tt0117500/");
    assert_eq!(og["matrix:image:size"], poster.len());
    assert_eq!(og["og:image:width"], 40);
    assert_eq!(og["og:image:height"], 30);
    assert_eq!(og["og:image:type"], "image/png");
    let mxc = og["og:image"].as_str().expect("og:image");
    let path = mxc.strip_prefix("mxc://").expect("an mxc URI");
    let resp = s
        .http
        .get(s.url(&format!("{V1}/download/{path}")))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        poster.as_slice()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Cached: the legacy path, and a `ts` in the past, are served without a fetch.
    let (st, again) = s
        .get(
            &format!("/_matrix/media/v3/preview_url?url={}&ts=1000", enc(&page)),
            t,
        )
        .await;
    assert_eq!((st, &again), (200, &og));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the cache was not used");

    // The title stands in for og:title.
    let (st, plain) = s
        .get(
            &format!(
                "{V1}/preview_url?url={}",
                enc(&format!("{base}/plain.html"))
            ),
            t,
        )
        .await;
    assert_eq!(st, 200, "{plain}");
    assert_eq!(plain, serde_json::json!({"og:title": "Only a title"}));

    // An image URL is previewed as the image.
    let (st, img) = s
        .get(
            &format!(
                "{V1}/preview_url?url={}",
                enc(&format!("{base}/poster.png"))
            ),
            t,
        )
        .await;
    assert_eq!(st, 200, "{img}");
    assert!(
        img["og:image"]
            .as_str()
            .is_some_and(|u| u.starts_with("mxc://"))
    );
    assert_eq!(img["og:image:width"], 40);

    // Bad parameters, a page that is not there.
    let (st, b) = s.get(&format!("{V1}/preview_url"), t).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let (st, b) = s
        .get(
            &format!("{V1}/preview_url?url={}", enc("ftp://example.org/x")),
            t,
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s
        .get(
            &format!("{V1}/preview_url?url={}", enc(&format!("{base}/missing"))),
            t,
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (502, Some("M_UNKNOWN")), "{b}");
    let (st, _) = s
        .get(&format!("{V1}/preview_url?url={}", enc(&page)), None)
        .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn loopback_is_denied_by_default() {
    let (base, hits, _) = page_server().await;
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());
    let (st, b) = s
        .get(
            &format!("{V1}/preview_url?url={}", enc(&format!("{base}/film.html"))),
            t,
        )
        .await;
    assert_eq!(
        (st, b["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{b}"
    );
    // A name that resolves to loopback only cannot be fetched either.
    let port = base.rsplit(':').next().expect("port");
    let (st, b) = s
        .get(
            &format!(
                "{V1}/preview_url?url={}",
                enc(&format!("http://localhost:{port}/film.html"))
            ),
            t,
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (502, Some("M_UNKNOWN")), "{b}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the page server was reached"
    );
}
