//! populate (fill a server with events) and wait-ready (time a start-up).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::json;

use crate::Ctx;
use crate::hs::{Res, User};
use crate::procfs::CostMeter;
use crate::setup;
use crate::stats;

#[derive(Args, Debug, Clone)]
pub struct PopulateArgs {
    /// Messages to send in all.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Users sending them (each joins every room).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    #[arg(long, default_value_t = 5)]
    pub rooms: usize,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 32)]
    pub send_concurrency: usize,
    /// Write one user's credentials here, for `wait-ready --token-file`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

pub async fn run(ctx: &Ctx, a: PopulateArgs) -> Res<()> {
    ctx.note(&format!(
        "populate {} ({}): {} messages from {} users into {} rooms",
        ctx.common.url, ctx.common.label, a.events, a.users, a.rooms
    ));
    let users = setup::register_users(ctx, a.users.max(1), "p").await?;
    let all: Vec<usize> = (0..users.len()).collect();
    let groups: Vec<Vec<usize>> = (0..a.rooms.max(1)).map(|_| all.clone()).collect();
    let rooms = setup::make_rooms(ctx, &users, &groups).await?;
    if let Some(path) = &a.token_file {
        let u = &users[0];
        let v = json!({ "url": ctx.common.url, "user_id": u.user_id, "access_token": u.token, "rooms": rooms });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")?;
    }

    let meter = CostMeter::start(ctx.common.server_pid);
    let next = Arc::new(AtomicUsize::new(0));
    let pb = ctx.bar(a.events as u64, "send messages");
    let t0 = Instant::now();
    let workers: Vec<_> = (0..a.send_concurrency.max(1))
        .map(|w| {
            let next = next.clone();
            let hs = ctx.hs.clone();
            let users: Vec<User> = users.clone();
            let rooms = rooms.clone();
            let pb = pb.clone();
            let run_id = ctx.run_id.clone();
            let total = a.events;
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let user = &users[i % users.len()];
                    let room = &rooms[(i / users.len()) % rooms.len()];
                    let t = Instant::now();
                    let body = format!("populate message {i} from worker {w}: the quick brown fox jumps over the lazy dog");
                    hs.send_message_retry(user, room, &format!("{run_id}-p{i}"), &body).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    pb.inc(1);
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await??);
    }
    pb.finish();
    let secs = t0.elapsed().as_secs_f64();
    let cost = match meter {
        Some(m) => Some(m.finish().await),
        None => None,
    };
    let send = stats::summarize(&mut lat);
    ctx.note(&format!(
        "{}: {} messages in {secs:.1} s ({:.0}/s), send p50 {:.1} ms p99 {:.1} ms",
        ctx.common.label,
        a.events,
        a.events as f64 / secs,
        send.p50,
        send.p99
    ));
    let params = json!({ "events": a.events, "users": a.users, "rooms": a.rooms, "send_concurrency": a.send_concurrency });
    let results = json!({ "seconds": secs, "events_per_second": a.events as f64 / secs, "send_ms": send, "room_ids": rooms });
    ctx.finish("populate", params, results, cost).await
}

#[derive(Args, Debug, Clone)]
pub struct ReadyArgs {
    /// When the server was started (`date +%s%N` just before starting it); default: now.
    #[arg(long)]
    pub since_unix_ns: Option<u128>,
    /// Milliseconds between polls of /versions.
    #[arg(long, default_value_t = 2)]
    pub poll_ms: u64,
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// After /versions answers, also time the first /sync of this user (from `populate
    /// --token-file`): the server is only useful once it reads its database.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Events the database holds (recorded with the result; see `populate`).
    #[arg(long)]
    pub events_in_db: Option<u64>,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub async fn wait_ready(ctx: &Ctx, a: ReadyArgs) -> Res<()> {
    let since = a.since_unix_ns.unwrap_or_else(unix_ns);
    let t0 = Instant::now();
    let mut polls = 0u64;
    let ready_ns = loop {
        polls += 1;
        if ctx.hs.versions(Duration::from_millis(1000)).await.is_ok() {
            break unix_ns();
        }
        if t0.elapsed() > Duration::from_secs(a.timeout_secs) {
            return Err(format!(
                "{} did not answer /versions within {} s",
                ctx.common.url, a.timeout_secs
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
    };
    let ready_ms = ready_ns.saturating_sub(since) as f64 / 1e6;
    let mut first_sync_ms = None;
    if let Some(path) = &a.token_file {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let user = User {
            user_id: v["user_id"]
                .as_str()
                .ok_or("token file has no user_id")?
                .to_string(),
            token: v["access_token"]
                .as_str()
                .ok_or("token file has no access_token")?
                .to_string(),
        };
        ctx.hs.sync(&user, None, 0, None).await?;
        first_sync_ms = Some(unix_ns().saturating_sub(since) as f64 / 1e6);
    }
    ctx.note(&format!(
        "{}: /versions answered {ready_ms:.1} ms after start{}",
        ctx.common.label,
        first_sync_ms
            .map(|s| format!(", first full /sync done at {s:.1} ms"))
            .unwrap_or_default()
    ));
    let params = json!({ "poll_ms": a.poll_ms, "events_in_db": a.events_in_db, "measured_from_start": a.since_unix_ns.is_some() });
    let results =
        json!({ "versions_ready_ms": ready_ms, "first_sync_ms": first_sync_ms, "polls": polls });
    ctx.finish("startup", params, results, None).await
}
