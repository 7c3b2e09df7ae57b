//! idle-connections: what K open /sync long-polls cost the server when nothing happens.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::Ctx;
use crate::hs::Res;
use crate::procfs::CostMeter;
use crate::setup::{self, Loops};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Long-polls (one user each) to hold open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Users share rooms of this size (0 or 1: no rooms).
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Seconds to hold them open while measuring.
    #[arg(long, default_value_t = 30.0)]
    pub hold_secs: f64,
    /// Seconds to measure the server before opening any long-poll.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Long-poll timeout of every /sync (each returns empty and is re-sent after it).
    #[arg(long, default_value_t = 30_000)]
    pub sync_timeout_ms: u64,
    #[arg(long, default_value_t = 600)]
    pub open_timeout_secs: u64,
}

pub async fn run(ctx: &Ctx, a: IdleArgs) -> Res<()> {
    let base = Instant::now();
    ctx.note(&format!(
        "idle-connections on {} ({}): {} long-polls held {} s",
        ctx.common.url, ctx.common.label, a.conns, a.hold_secs
    ));
    let users = setup::register_users(ctx, a.conns, "c").await?;
    let members: Vec<usize> = (0..users.len()).collect();
    let groups = setup::layout(&members, a.room_size, 1, ctx.common.seed);
    if !groups.is_empty() {
        setup::make_rooms(ctx, &users, &groups).await?;
    }
    let since = setup::initial_syncs(ctx, &users).await?;

    let baseline = match CostMeter::start(ctx.common.server_pid) {
        Some(m) => {
            tokio::time::sleep(Duration::from_secs_f64(a.baseline_secs)).await;
            Some(m.finish().await)
        }
        None => None,
    };
    let t_open = Instant::now();
    let loops = Loops::start(&ctx.hs, &users, since, a.sync_timeout_ms, None, base);
    let all_open = loops
        .wait_open(
            ctx,
            Duration::from_secs(a.open_timeout_secs),
            Duration::from_secs(1),
        )
        .await;
    let open_secs = t_open.elapsed().as_secs_f64();
    let syncs0 = loops.shared.syncs.load(Ordering::Relaxed);
    let meter = CostMeter::start(ctx.common.server_pid);
    let bench_cpu0 = crate::procfs::cpu_seconds("self").unwrap_or(0.0);
    let sp = ctx.spinner(format!(
        "holding {} long-polls for {} s",
        a.conns, a.hold_secs
    ));
    tokio::time::sleep(Duration::from_secs_f64(a.hold_secs)).await;
    sp.finish_and_clear();
    let open_at_end = loops.shared.in_flight.load(Ordering::Relaxed);
    let cost = match meter {
        Some(m) => Some(m.finish().await),
        None => None,
    };
    let bench_cpu = crate::procfs::cpu_seconds("self").unwrap_or(0.0) - bench_cpu0;
    let syncs = loops.shared.syncs.load(Ordering::Relaxed) - syncs0;
    let outs = loops.stop().await;
    let errors: u64 = outs.iter().map(|o| o.errors).sum();
    let first_error = outs.iter().find_map(|o| o.first_error.clone());

    let per_conn_kib = match (&baseline, &cost) {
        (Some(b), Some(c)) if a.conns > 0 => {
            Some((c.rss_end_kib as f64 - b.rss_end_kib as f64) / a.conns as f64)
        }
        _ => None,
    };
    if let (Some(b), Some(c)) = (&baseline, &cost) {
        ctx.note(&format!(
            "{}: RSS {:.1} MiB before, {:.1} MiB with {} long-polls ({:.1} KiB each); CPU {:.4} cores idle, {:.4} cores held; {} fds",
            ctx.common.label,
            b.rss_end_kib as f64 / 1024.0,
            c.rss_end_kib as f64 / 1024.0,
            a.conns,
            per_conn_kib.unwrap_or(f64::NAN),
            b.cpu_cores,
            c.cpu_cores,
            c.fds_end
        ));
    }
    if let Some(e) = &first_error {
        ctx.note(&format!("{errors} /sync errors, first: {e}"));
    }
    let params = json!({
        "conns": a.conns, "room_size": a.room_size, "hold_secs": a.hold_secs,
        "baseline_secs": a.baseline_secs, "sync_timeout_ms": a.sync_timeout_ms,
    });
    let results = json!({
        "all_long_polls_open": all_open,
        "open_seconds": open_secs,
        "open_at_end": open_at_end,
        "syncs_returned_while_held": syncs,
        "sync_errors": errors,
        "first_sync_error": first_error,
        "baseline": baseline,
        "rss_per_conn_kib": per_conn_kib,
        "bench_cpu_cores": bench_cpu / a.hold_secs.max(1e-9),
    });
    ctx.finish("idle-connections", params, results, cost).await
}
