//! One `POST` to a gateway and what its answer means for the queue.
//!
//! * 2xx: delivered; the body's `rejected` push keys are pushers the gateway will never
//!   deliver to again, which the spec says the homeserver must remove.
//! * 429, 5xx, timeouts, connection errors: try again later (backoff in `worker.rs`).
//! * Any other 4xx, a URL the IP filter denies, a malformed URL: this push can never
//!   succeed; it is dropped (and logged) so the queue behind it moves on.
use federation_client::guarded::GuardedClient;
use serde_json::Value;

/// Largest gateway answer read (it is `{"rejected": [...]}`).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered; these push keys were rejected.
    Delivered { rejected: Vec<String> },
    /// Worth another try later.
    Retry(String),
    /// Never going to work for this push.
    Drop(String),
}

/// Send `body` to `url`.
pub async fn notify(client: &GuardedClient, url: &str, body: &Value) -> Outcome {
    let url = match client.check_url(url) {
        Ok(u) => u,
        Err(why) => return Outcome::Drop(why),
    };
    let resp = match client.http().post(url).json(body).send().await {
        Ok(r) => r,
        // A redirect to a denied address surfaces here too; retrying cannot help, but
        // it cannot be told apart from a network error cheaply, and retries are bounded.
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let status = resp.status();
    if status.is_success() {
        let rejected = GuardedClient::read_body(resp, MAX_ANSWER_BYTES)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v.get("rejected")?.as_array().map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        return Outcome::Delivered { rejected };
    }
    if status.as_u16() == 429 || status.is_server_error() {
        return Outcome::Retry(format!("gateway answered {status}"));
    }
    Outcome::Drop(format!("gateway answered {status}"))
}
