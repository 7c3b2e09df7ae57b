//! `/_pulse/status`: a small server-rendered HTML page for the server's admins — health
//! (version, uptime, database size, memory), users online now, presence updates per second,
//! and the outbound federation destinations with their queues and backoff. No JavaScript.
//!
//! Who may see it: a server admin, by access token. Either as `Authorization: Bearer …`
//! (scripts, curl), or pasted once into the page's form, which keeps it in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/_pulse/`. A token rather than a password form:
//! the page adds no new place to guess passwords outside `/login`'s rate limits, and an
//! admin has a token already (any client's, or `/login`'s). Anyone else gets 401 (with
//! the form) or 403. Everything rendered is HTML-escaped; destinations and errors come
//! from other servers.
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics::ServerView;

const COOKIE_NAME: &str = "pulse_status_token";

pub fn router(view: Arc<ServerView>) -> Router {
    let (v1, v2) = (view.clone(), view);
    Router::new()
        .route(
            "/_pulse/status",
            get(move |headers: HeaderMap| {
                let view = v1.clone();
                async move { page(view, token_of(&headers), false).await }
            }),
        )
        .route(
            "/_pulse/status/login",
            post(move |body: Bytes| {
                let view = v2.clone();
                async move {
                    let token = form_field(&body, "access_token").filter(|t| !t.is_empty());
                    page(view, token, true).await
                }
            }),
        )
        .route(
            "/_pulse/status/logout",
            post(|| async {
                let mut r = html(StatusCode::OK, &login_page("Logged out.")).into_response();
                r.headers_mut().insert(
                    SET_COOKIE,
                    HeaderValue::from_static(
                        "pulse_status_token=; Path=/_pulse/; Max-Age=0; HttpOnly; SameSite=Strict",
                    ),
                );
                r
            }),
        )
}

/// The bearer token, else the cookie's.
fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("pulse_status_token="))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

enum Access {
    Admin(String),
    NotAdmin,
    Unknown,
}

async fn check(view: &Arc<ServerView>, token: String) -> Result<Access, String> {
    let accounts = view.accounts.clone();
    tokio::task::spawn_blocking(move || {
        let Some(session) = accounts.authenticate(&token).map_err(|e| e.to_string())? else {
            return Ok(Access::Unknown);
        };
        Ok(
            if accounts
                .is_admin(&session.user_id)
                .map_err(|e| e.to_string())?
            {
                Access::Admin(session.user_id.to_string())
            } else {
                Access::NotAdmin
            },
        )
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Renders the page for `token` (from the form when `set_cookie`, which then keeps it).
async fn page(view: Arc<ServerView>, token: Option<String>, set_cookie: bool) -> Response {
    let Some(token) = token else {
        return html(StatusCode::UNAUTHORIZED, &login_page("")).into_response();
    };
    let access = match check(&view, token.clone()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("status page: cannot check the token: {e}");
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                &shell("Error", "<p>Storage error.</p>"),
            )
            .into_response();
        }
    };
    let admin = match access {
        Access::Admin(user) => user,
        Access::NotAdmin => {
            return html(
                StatusCode::FORBIDDEN,
                &shell(
                    "Forbidden",
                    "<p>The status page is for server admins only.</p>",
                ),
            )
            .into_response();
        }
        Access::Unknown => {
            return html(
                StatusCode::UNAUTHORIZED,
                &login_page("That access token is not valid."),
            )
            .into_response();
        }
    };
    let view2 = view.clone();
    // Reads RocksDB properties and the data directory: off the async workers.
    let body = match tokio::task::spawn_blocking(move || render(&view2, &admin)).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("status page: rendering failed: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut r = html(StatusCode::OK, &body).into_response();
    if set_cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={token}; Path=/_pulse/; HttpOnly; SameSite=Strict"
        ))
    {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

fn html(status: StatusCode, body: &str) -> impl IntoResponse {
    (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        body.to_owned(),
    )
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · Pulse</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:60em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}\
         </style></head><body><h1>{}</h1>\n{}\n</body></html>\n",
        escape(title),
        escape(title),
        body
    )
}

fn login_page(message: &str) -> String {
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p id=\"message\">{}</p>", escape(message))
    };
    shell(
        "Pulse status",
        &format!(
            "{msg}<p>Server admins only. Paste an admin's access token \
             (kept in a cookie for this page only).</p>\
             <form method=\"post\" action=\"/_pulse/status/login\">\
             <label>Access token <input type=\"password\" name=\"access_token\" \
             autocomplete=\"off\" required></label> <button type=\"submit\">Show status</button>\
             </form>"
        ),
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else {
        format!("{m}m {s}s")
    }
}

/// The page's HTML (the numbers read now).
fn render(view: &ServerView, admin: &str) -> String {
    let mut b = String::new();
    let db = view.db.stats();
    let process = crate::metrics::process::read();
    let p = view.presence.stats();
    let _ = write!(
        b,
        "<p>Signed in as <span id=\"admin\">{}</span>. \
         <form method=\"post\" action=\"/_pulse/status/logout\" style=\"display:inline\">\
         <button type=\"submit\">Log out</button></form></p>",
        escape(admin)
    );
    let _ = write!(
        b,
        "<h2>Health</h2><table id=\"health\">\
         <tr><th>Version</th><td id=\"version\">{}</td></tr>\
         <tr><th>Uptime</th><td id=\"uptime\">{}</td></tr>\
         <tr><th>Database on disk</th><td id=\"db-size\">{}</td></tr>\
         <tr><th>Database SST files / memtables</th><td>{} / {}</td></tr>\
         <tr><th>Compactions running</th><td>{}</td></tr>",
        escape(env!("CARGO_PKG_VERSION")),
        duration(view.started.elapsed().as_secs()),
        bytes(db.disk_bytes),
        bytes(db.sst_bytes),
        bytes(db.memtable_bytes),
        db.running_compactions,
    );
    if let Some(pr) = process {
        let _ = write!(
            b,
            "<tr><th>Memory (resident)</th><td id=\"memory\">{}</td></tr>\
             <tr><th>CPU time</th><td>{:.1} s</td></tr>",
            bytes(pr.resident_bytes),
            pr.cpu_seconds
        );
    }
    b.push_str("</table>");

    let online: u64 = p.users_now.iter().map(|(_, n)| n).sum();
    let _ = write!(
        b,
        "<h2>Presence</h2><table id=\"presence\">\
         <tr><th>Users online now</th><td id=\"users-online\">{online}</td></tr>"
    );
    for (state, n) in &p.users_now {
        let _ = write!(
            b,
            "<tr><th>… {}</th><td>{n}</td></tr>",
            escape(state.as_wire_str())
        );
    }
    let rates = view.rates.per_second(&view.presence);
    let rate = |r: Option<f64>| r.map_or("measuring…".to_owned(), |r| format!("{r:.2}"));
    let _ = write!(
        b,
        "<tr><th>Presence updates per second (in, last minute)</th><td id=\"updates-per-second\">{}</td></tr>\
         <tr><th>Presence changes published per second</th><td id=\"published-per-second\">{}</td></tr>\
         <tr><th>Presence updates in (local / federation)</th><td id=\"updates-total\">{} / {}</td></tr>\
         </table>",
        rate(rates.map(|r| r.0)),
        rate(rates.map(|r| r.1)),
        p.updates_in_local,
        p.updates_in_federation,
    );

    b.push_str("<h2>Federation</h2>");
    match &view.federation {
        None => b.push_str("<p id=\"federation\">Federation is disabled.</p>"),
        Some(f) => {
            let s = f.sender.stats();
            let inbound = f.inbound.snapshot();
            let _ = write!(
                b,
                "<p id=\"federation\">Transactions sent {}, failed {}, rejected {}; received {}.</p>",
                s.transactions_sent,
                s.transactions_failed,
                s.transactions_rejected,
                inbound.transactions
            );
            let dests = f.sender.status();
            if dests.is_empty() {
                b.push_str("<p id=\"destinations-empty\">No destinations yet.</p>");
            } else {
                b.push_str(
                    "<table id=\"destinations\"><tr><th>Destination</th><th>Queued PDUs</th>\
                     <th>Queued EDUs</th><th>Failures</th><th>Backoff</th><th>Last success</th>\
                     <th>Last error</th></tr>",
                );
                let now = storage::now_ms();
                for d in &dests {
                    let backoff = d.retry_at_ms.map_or("—".to_owned(), |t| {
                        format!("retry in {}", duration(t.saturating_sub(now) / 1000))
                    });
                    let success = d.last_success_ms.map_or("never".to_owned(), |t| {
                        format!("{} ago", duration(now.saturating_sub(t) / 1000))
                    });
                    let _ = write!(
                        b,
                        "<tr class=\"destination\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                         <td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(&d.destination),
                        d.pending_pdus,
                        d.pending_edus,
                        d.failures,
                        escape(&backoff),
                        escape(&success),
                        escape(d.last_error.as_deref().unwrap_or("")),
                    );
                }
                b.push_str("</table>");
            }
        }
    }
    shell("Pulse status", &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn tokens_come_from_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h), None);
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=b; pulse_status_token=tok1"),
        );
        assert_eq!(token_of(&h).as_deref(), Some("tok1"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok2"));
        assert_eq!(token_of(&h).as_deref(), Some("tok2"));
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"x=1&access_token=syt_a%2Bb+c", "access_token").as_deref(),
            Some("syt_a+b c")
        );
        assert_eq!(form_field(b"x=1", "access_token"), None);
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(59), "0m 59s");
        assert_eq!(duration(3 * 86_400 + 7200), "3d 2h 0m");
    }
}
