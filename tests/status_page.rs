//! `/_pulse/status`: admins see the server's health, users online and federation queues;
//! others get 401 (with the token form) or 403; what is rendered is escaped. One test loads
//! the page in headless Chromium (Debian's `chromium`) through the page's own login form.
mod common;

use std::process::Command;

use common::{TestServer, enc};
use serde_json::json;

async fn status(s: &TestServer, token: Option<&str>) -> (u16, String) {
    let mut req = s.http.get(s.url("/_pulse/status"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("status page");
    let code = r.status().as_u16();
    let ct = r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    (code, r.text().await.expect("body"))
}

/// The text of the element with `id` (no nested tags inside).
fn text_of(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = at + html[at..].find('>')? + 1;
    let end = start + html[start..].find('<')?;
    Some(html[start..end].to_owned())
}

async fn go_online(s: &TestServer, user: &common::User) {
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&user.user_id));
    let (code, body) = s
        .put(&path, Some(&user.token), json!({"presence": "online"}))
        .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn only_admins_see_the_status_page() {
    let s = TestServer::start().await;
    let (code, html) = status(&s, None).await;
    assert_eq!(code, 401);
    assert!(html.contains("action=\"/_pulse/status/login\""), "{html}");
    let (code, html) = status(&s, Some("not-a-token")).await;
    assert_eq!(code, 401);
    assert!(html.contains("not valid"), "{html}");
    let user = s.register("mallory").await;
    let (code, html) = status(&s, Some(&user.token)).await;
    assert_eq!(code, 403, "{html}");
    assert!(!html.contains("users-online"));

    let admin = s.register_admin("root").await;
    go_online(&s, &user).await;
    go_online(&s, &admin).await;
    let (code, html) = status(&s, Some(&admin.token)).await;
    assert_eq!(code, 200, "{html}");
    assert_eq!(
        text_of(&html, "users-online").as_deref(),
        Some("2"),
        "{html}"
    );
    assert_eq!(
        text_of(&html, "version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(text_of(&html, "admin").as_deref(), Some("@root:localhost"));
    assert!(
        text_of(&html, "db-size").is_some_and(|t| t.ends_with('B')),
        "{html}"
    );
    assert_eq!(
        text_of(&html, "updates-total").as_deref(),
        Some("2 / 0"),
        "{html}"
    );
    // The test config federates: no destination yet.
    assert!(html.contains("id=\"destinations-empty\""), "{html}");
    assert!(!html.contains("<script"), "server-rendered, no JavaScript");
}

#[tokio::test]
async fn the_form_login_sets_a_cookie_that_opens_the_page() {
    let s = TestServer::start().await;
    let admin = s.register_admin("boss").await;
    let r = s
        .http
        .post(s.url("/_pulse/status/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("access_token={}", enc(&admin.token)))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let r = s
        .http
        .get(s.url("/_pulse/status"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("page");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.expect("body").contains("users-online"));
    // A bad token through the form is refused without a cookie.
    let r = s
        .http
        .post(s.url("/_pulse/status/login"))
        .body("access_token=nope")
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn headless_chromium_shows_the_status_page() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(chromium) = chromium else {
        eprintln!(
            "SKIPPED headless_chromium_shows_the_status_page: no chromium (apt-get install chromium)"
        );
        return;
    };
    let s = TestServer::start().await;
    let admin = s.register_admin("chief").await;
    go_online(&s, &admin).await;
    // A local page that submits the status page's own login form (the page itself has no
    // JavaScript; this one only presses its button).
    let login = s.dir.path().join("login.html");
    std::fs::write(
        &login,
        format!(
            "<!DOCTYPE html><html><body><form id=\"f\" method=\"post\" action=\"{}\">\
             <input name=\"access_token\" value=\"{}\"></form>\
             <script>document.getElementById('f').submit()</script></body></html>",
            s.url("/_pulse/status/login"),
            admin.token
        ),
    )
    .expect("write login page");
    let profile = s.dir.path().join("chromium-profile");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=10000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", login.display()))
            .output()
    })
    .await
    .expect("join")
    .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<h1>Pulse status</h1>"),
        "chromium did not show the page: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text_of(&dom, "users-online").as_deref(), Some("1"), "{dom}");
    assert_eq!(
        text_of(&dom, "admin").as_deref(),
        Some("@chief:localhost"),
        "{dom}"
    );
    assert_eq!(
        text_of(&dom, "version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(dom.contains("id=\"destinations-empty\""), "{dom}");
}
