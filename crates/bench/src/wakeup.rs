//! sync-wakeup: from a message send to another user's waiting /sync returning.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::Ctx;
use crate::hs::{Res, SyncResp};
use crate::procfs::CostMeter;
use crate::setup::{self, Loops};
use crate::stats;

#[derive(Args, Debug, Clone)]
pub struct WakeupArgs {
    /// Messages sent (one measurement each).
    #[arg(long, default_value_t = 200)]
    pub sends: usize,
    /// Idle users holding a /sync long-poll open meanwhile.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Idle users share rooms of this size among themselves (0 or 1: no rooms).
    #[arg(long, default_value_t = 10)]
    pub idle_room_size: usize,
    /// Milliseconds between the receiver's /sync going out and the send, so the sync is
    /// waiting when the message arrives.
    #[arg(long, default_value_t = 100)]
    pub gap_ms: u64,
    /// Long-poll timeout of every /sync.
    #[arg(long, default_value_t = 30_000)]
    pub sync_timeout_ms: u64,
    /// How long to wait for every idle long-poll to be open.
    #[arg(long, default_value_t = 600)]
    pub open_timeout_secs: u64,
    /// Extra rooms the receiver is alone in (nothing happens there): what each of its
    /// wake-ups has to look at besides the room the message arrives in.
    #[arg(long, default_value_t = 0)]
    pub receiver_rooms: usize,
}

pub async fn run(ctx: &Ctx, a: WakeupArgs) -> Res<()> {
    let base = Instant::now();
    ctx.note(&format!(
        "sync-wakeup on {} ({}): {} sends, {} idle long-polls",
        ctx.common.url, ctx.common.label, a.sends, a.idle
    ));
    let pair = setup::register_users(ctx, 2, "w").await?;
    let (sender, receiver) = (pair[0].clone(), pair[1].clone());
    let rooms = setup::make_rooms(ctx, &pair, &[vec![0, 1]]).await?;
    let room = rooms[0].clone();
    if a.receiver_rooms > 0 {
        let alone: Vec<Vec<usize>> = vec![vec![1]; a.receiver_rooms];
        setup::make_rooms(ctx, &pair, &alone).await?;
    }

    let idle_users = if a.idle > 0 {
        setup::register_users(ctx, a.idle, "i").await?
    } else {
        Vec::new()
    };
    let members: Vec<usize> = (0..idle_users.len()).collect();
    let groups = setup::layout(&members, a.idle_room_size, 1, ctx.common.seed);
    if !groups.is_empty() {
        setup::make_rooms(ctx, &idle_users, &groups).await?;
    }
    let idle_since = setup::initial_syncs(ctx, &idle_users).await?;
    let loops = Loops::start(
        &ctx.hs,
        &idle_users,
        idle_since,
        a.sync_timeout_ms,
        None,
        base,
    );
    let all_open = loops
        .wait_open(
            ctx,
            Duration::from_secs(a.open_timeout_secs),
            Duration::from_secs(2),
        )
        .await;
    if !all_open {
        ctx.note("warning: not every idle long-poll was open in time; measuring anyway");
    }

    let mut since = ctx
        .hs
        .sync_retry(&receiver, None, 0, None)
        .await?
        .next_batch;
    let meter = CostMeter::start(ctx.common.server_pid);
    let idle_syncs0 = loops
        .shared
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed);
    let pb = ctx.bar(a.sends as u64, "sends");
    let mut wake_ms = Vec::with_capacity(a.sends);
    let mut send_ms = Vec::with_capacity(a.sends);
    let (mut early_returns, mut errors) = (0u64, 0u64);
    let mut first_error: Option<String> = None;
    for i in 0..a.sends {
        let hs = ctx.hs.clone();
        let rcv = receiver.clone();
        let s = since.clone();
        let timeout = a.sync_timeout_ms;
        let waiter = tokio::spawn(async move {
            let r = hs.sync(&rcv, Some(&s), timeout, None).await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(a.gap_ms)).await;
        let t0 = Instant::now();
        let sent = ctx
            .hs
            .send_message(
                &sender,
                &room,
                &format!("{}-{i}", ctx.run_id),
                &format!("wakeup {i}"),
            )
            .await;
        let t_sent = Instant::now();
        let event_id = match sent {
            Ok(id) => id,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                let (r, _) = waiter.await?;
                if let Ok(r) = r {
                    since = r.next_batch;
                }
                pb.inc(1);
                continue;
            }
        };
        // The waiting sync should come back with the event; if it came back for anything
        // else, sync again until the event is there and time that.
        let (mut resp, mut t1): (Res<SyncResp>, Instant) = waiter.await?;
        let mut rounds = 0;
        loop {
            match &resp {
                Ok(r) if r.has_event(&room, &event_id) => break,
                Ok(r) => {
                    early_returns += 1;
                    since = r.next_batch.clone();
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
            rounds += 1;
            if rounds > 20 {
                break;
            }
            resp = ctx
                .hs
                .sync(&receiver, Some(&since), a.sync_timeout_ms, None)
                .await;
            t1 = Instant::now();
        }
        if let Ok(r) = &resp
            && r.has_event(&room, &event_id)
        {
            wake_ms.push(t1.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            send_ms.push((t_sent - t0).as_secs_f64() * 1000.0);
            since = r.next_batch.clone();
        }
        pb.inc(1);
    }
    pb.finish();
    let cost = match meter {
        Some(m) => Some(m.finish().await),
        None => None,
    };
    let idle_syncs = loops
        .shared
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed)
        - idle_syncs0;
    let outs = loops.stop().await;
    let idle_errors: u64 = outs.iter().map(|o| o.errors).sum();
    let first_idle_error = outs.iter().find_map(|o| o.first_error.clone());
    let cdf_sorted = {
        let mut v = wake_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let wake = stats::summarize(&mut wake_ms);
    let send = stats::summarize(&mut send_ms);
    ctx.note(&format!(
        "{}: wake-up median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms over {} sends with {} idle long-polls ({} early returns, {} errors)",
        ctx.common.label, wake.p50, wake.p90, wake.p99, wake.count, a.idle, early_returns, errors
    ));
    if let Some(e) = &first_error {
        ctx.note(&format!("first error: {e}"));
    }
    let params = json!({
        "sends": a.sends, "idle": a.idle, "idle_room_size": a.idle_room_size, "receiver_rooms": a.receiver_rooms,
        "gap_ms": a.gap_ms, "sync_timeout_ms": a.sync_timeout_ms,
        "registration": if ctx.common.shared_secret.is_some() { "shared-secret" } else { "m.login.dummy" },
    });
    let results = json!({
        "all_idle_long_polls_open": all_open,
        "wakeup_ms": wake,
        "wakeup_cdf_ms": stats::cdf(&cdf_sorted, 1001),
        "send_ms": send,
        "early_returns": early_returns,
        "errors": errors,
        "first_error": first_error,
        "idle_syncs_returned_during_measurement": idle_syncs,
        "idle_sync_errors": idle_errors,
        "first_idle_sync_error": first_idle_error,
    });
    ctx.finish("sync-wakeup", params, results, cost).await
}
