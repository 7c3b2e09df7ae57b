//! presence-fanout: what one presence update costs to deliver to every room-mate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::Ctx;
use crate::hs::Res;
use crate::procfs::CostMeter;
use crate::setup::{self, Loops};
use crate::stats::{self, Rng};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Users, each long-polling /sync.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Members per room.
    #[arg(long, default_value_t = 20)]
    pub room_size: usize,
    /// Rooms each user is in (layers after the first mix users randomly).
    #[arg(long, default_value_t = 1)]
    pub rooms_per_user: usize,
    /// Presence updates per second (open loop: sent on schedule, not after the last answer).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of updates.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Long-poll timeout of every /sync.
    #[arg(long, default_value_t = 30_000)]
    pub sync_timeout_ms: u64,
    /// Seconds to measure the server's idle cost with all long-polls open, before updates.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
    /// After the last update: stop waiting for deliveries once none came for this long...
    #[arg(long, default_value_t = 3.0)]
    pub drain_quiet_secs: f64,
    /// ...or after this long at most.
    #[arg(long, default_value_t = 30.0)]
    pub drain_max_secs: f64,
    /// Presence PUTs in flight at most; past it the driver falls behind its rate.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// How long to wait for every long-poll to be open.
    #[arg(long, default_value_t = 600)]
    pub open_timeout_secs: u64,
}

struct Update {
    user: usize,
    start_us: u64,
    put_ms: f64,
    error: Option<String>,
}

pub async fn run(ctx: &Ctx, a: FanoutArgs) -> Res<()> {
    let base = Instant::now();
    let n = a.users;
    if n < 2 {
        return Err("presence-fanout needs at least 2 users".into());
    }
    ctx.note(&format!(
        "presence-fanout on {} ({}): {n} users, rooms of {} x{} per user, {}/s for {} s",
        ctx.common.url, ctx.common.label, a.room_size, a.rooms_per_user, a.rate, a.duration
    ));
    let users = setup::register_users(ctx, n, "f").await?;
    let all: Vec<usize> = (0..n).collect();
    let groups = setup::layout(&all, a.room_size, a.rooms_per_user, ctx.common.seed);
    let room_ids = setup::make_rooms(ctx, &users, &groups).await?;

    // Who sees whose presence: everyone sharing a room.
    let mut co: Vec<Vec<u32>> = vec![Vec::new(); n];
    for g in &groups {
        for &u in g {
            co[u].extend(g.iter().filter(|&&m| m != u).map(|&m| m as u32));
        }
    }
    for c in &mut co {
        c.sort_unstable();
        c.dedup();
    }
    let eligible: Vec<usize> = (0..n).filter(|&u| !co[u].is_empty()).collect();
    let mean_fanout = co.iter().map(|c| c.len()).sum::<usize>() as f64 / n as f64;

    let since = setup::initial_syncs(ctx, &users).await?;
    let tag: Arc<str> = Arc::from(format!("pb {} ", ctx.run_id));
    let loops = Loops::start(
        &ctx.hs,
        &users,
        since,
        a.sync_timeout_ms,
        Some(tag.clone()),
        base,
    );
    let all_open = loops
        .wait_open(
            ctx,
            Duration::from_secs(a.open_timeout_secs),
            Duration::from_secs(1),
        )
        .await;
    if !all_open {
        ctx.note("warning: not every long-poll was open in time; measuring anyway");
    }

    // The server's cost with every long-poll open and nothing happening.
    let idle = CostMeter::start(ctx.common.server_pid);
    tokio::time::sleep(Duration::from_secs_f64(a.settle_secs)).await;
    let idle_cost = match idle {
        Some(m) => Some(m.finish().await),
        None => None,
    };

    let total = (a.rate * a.duration).round() as usize;
    let meter = CostMeter::start(ctx.common.server_pid);
    let bench_cpu0 = crate::procfs::cpu_seconds("self").unwrap_or(0.0);
    let sem = Arc::new(Semaphore::new(a.max_in_flight.max(1)));
    let mut rng = Rng::new(ctx.common.seed.wrapping_add(1));
    let pb = ctx.bar(total as u64, "presence updates");
    let t_drive = Instant::now();
    let mut late_ticks = 0u64;
    let mut handles = Vec::with_capacity(total);
    for seq in 0..total {
        let due = t_drive + Duration::from_secs_f64(seq as f64 / a.rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > Duration::from_millis(100) {
            late_ticks += 1;
        }
        let permit = sem.clone().acquire_owned().await?;
        let u = eligible[rng.below(eligible.len())];
        let hs = ctx.hs.clone();
        let user = users[u].clone();
        let msg = format!("{tag}{seq}");
        let pb = pb.clone();
        handles.push(tokio::spawn(async move {
            let start_us = base.elapsed().as_micros() as u64;
            let t = Instant::now();
            let r = hs.set_presence(&user, "online", &msg).await;
            let put_ms = t.elapsed().as_secs_f64() * 1000.0;
            drop(permit);
            pb.inc(1);
            Update {
                user: u,
                start_us,
                put_ms,
                error: r.err().map(|e| e.to_string()),
            }
        }));
    }
    let drive_secs = t_drive.elapsed().as_secs_f64();
    let mut updates = Vec::with_capacity(total);
    for h in handles {
        updates.push(h.await?);
    }
    pb.finish();
    let puts_done_secs = t_drive.elapsed().as_secs_f64();

    // Wait for deliveries: all expected arrived, or none for a while, or the limit.
    let expected_total: u64 = updates
        .iter()
        .filter(|u| u.error.is_none())
        .map(|u| co[u.user].len() as u64)
        .sum();
    let sp = ctx.spinner("waiting for deliveries".into());
    let t_drain = Instant::now();
    let mut last = loops.shared.tagged.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let got = loops.shared.tagged.load(Ordering::Relaxed);
        sp.set_message(format!("waiting for deliveries: {got}/{expected_total}"));
        if got >= expected_total {
            break;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        }
        if last_change.elapsed().as_secs_f64() >= a.drain_quiet_secs
            || t_drain.elapsed().as_secs_f64() >= a.drain_max_secs
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sp.finish_and_clear();
    let drain_secs = t_drain.elapsed().as_secs_f64();
    let cost = match meter {
        Some(m) => Some(m.finish().await),
        None => None,
    };
    let bench_cpu = crate::procfs::cpu_seconds("self").unwrap_or(0.0) - bench_cpu0;
    let measured_wall = t_drive.elapsed().as_secs_f64();
    let outs = loops.stop().await;

    // Match every arrival to its update.
    let updates_ok = updates.iter().filter(|u| u.error.is_none()).count();
    let mut first_arrival: Vec<HashMap<u32, u64>> = vec![HashMap::new(); n];
    let mut newest_seen: HashMap<(u32, u32), u32> = HashMap::new(); // (receiver, sender) -> seq
    let (mut duplicates, mut self_arrivals, mut unexpected, mut unknown) = (0u64, 0u64, 0u64, 0u64);
    for (r, out) in outs.iter().enumerate() {
        for &(seq, t) in &out.arrivals {
            let Some(up) = updates.get(seq as usize) else {
                unknown += 1;
                continue;
            };
            if up.user == r {
                self_arrivals += 1;
                continue;
            }
            if co[up.user].binary_search(&(r as u32)).is_err() {
                unexpected += 1;
                continue;
            }
            match first_arrival[r].entry(seq) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    duplicates += 1;
                    let first = (*e.get()).min(t);
                    e.insert(first);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(t);
                }
            }
            let e = newest_seen.entry((r as u32, up.user as u32)).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    let mut latencies = Vec::new();
    let (mut superseded, mut lost) = (0u64, 0u64);
    for (seq, up) in updates.iter().enumerate() {
        if up.error.is_some() {
            continue;
        }
        for &r in &co[up.user] {
            match first_arrival[r as usize].get(&(seq as u32)) {
                Some(&t) => latencies.push(t.saturating_sub(up.start_us) as f64 / 1000.0),
                None => match newest_seen.get(&(r, up.user as u32)) {
                    Some(&newer) if newer as usize > seq => superseded += 1,
                    _ => lost += 1,
                },
            }
        }
    }
    let delivered = latencies.len() as u64;
    let delivery = stats::summarize(&mut latencies);
    let delivery_cdf = stats::cdf(&latencies, 1001);
    let mut put_ms: Vec<f64> = updates
        .iter()
        .filter(|u| u.error.is_none())
        .map(|u| u.put_ms)
        .collect();
    let put = stats::summarize(&mut put_ms);
    let put_errors: Vec<&String> = updates.iter().filter_map(|u| u.error.as_ref()).collect();
    let first_start = updates.iter().map(|u| u.start_us).min().unwrap_or(0);
    let last_start = updates.iter().map(|u| u.start_us).max().unwrap_or(0);
    let span = (last_start - first_start) as f64 / 1e6;
    let achieved_rate = if span > 0.0 {
        (updates.len() - 1) as f64 / span
    } else {
        f64::NAN
    };
    let syncs: u64 = outs.iter().map(|o| o.syncs).sum();
    let sync_errors: u64 = outs.iter().map(|o| o.errors).sum();
    let first_sync_error = outs.iter().find_map(|o| o.first_error.clone());
    let expected = expected_total as f64;

    let (cpu_ms_per_update, cpu_ms_per_update_net, cpu_us_per_delivery) = match (&cost, &idle_cost)
    {
        (Some(c), idle) => {
            let idle_rate = idle.as_ref().map(|i| i.cpu_cores).unwrap_or(0.0);
            let per = c.cpu_seconds * 1000.0 / updates_ok.max(1) as f64;
            let net = (c.cpu_seconds - idle_rate * c.wall_seconds).max(0.0) * 1000.0
                / updates_ok.max(1) as f64;
            let per_del = c.cpu_seconds * 1e6 / delivered.max(1) as f64;
            (Some(per), Some(net), Some(per_del))
        }
        _ => (None, None, None),
    };

    ctx.note(&format!(
        "{}: delivered {delivered}/{expected_total} ({:.2}%), superseded {superseded}, lost {lost}; delivery p50 {:.1} ms p99 {:.1} ms; PUT p50 {:.1} ms; achieved {achieved_rate:.1}/s{}",
        ctx.common.label,
        100.0 * delivered as f64 / expected.max(1.0),
        delivery.p50,
        delivery.p99,
        put.p50,
        cpu_ms_per_update.map(|c| format!("; server CPU {c:.2} ms/update")).unwrap_or_default(),
    ));
    if let Some(e) = put_errors.first() {
        ctx.note(&format!(
            "{} presence PUTs failed, first: {e}",
            put_errors.len()
        ));
    }
    if let Some(e) = &first_sync_error {
        ctx.note(&format!("{sync_errors} /sync errors, first: {e}"));
    }

    let params = json!({
        "users": n, "room_size": a.room_size, "rooms_per_user": a.rooms_per_user, "rooms": room_ids.len(),
        "rate": a.rate, "duration": a.duration, "sync_timeout_ms": a.sync_timeout_ms,
        "max_in_flight": a.max_in_flight, "seed": ctx.common.seed,
        "registration": if ctx.common.shared_secret.is_some() { "shared-secret" } else { "m.login.dummy" },
    });
    let results = json!({
        "all_long_polls_open": all_open,
        "mean_fanout": mean_fanout,
        "updates_planned": total,
        "updates_ok": updates_ok,
        "put_errors": put_errors.len(),
        "first_put_error": put_errors.first(),
        "target_rate": a.rate,
        "achieved_rate": achieved_rate,
        "late_ticks": late_ticks,
        "drive_seconds": drive_secs,
        "puts_done_seconds": puts_done_secs,
        "drain_seconds": drain_secs,
        "expected_deliveries": expected_total,
        "delivered": delivered,
        "superseded": superseded,
        "lost": lost,
        "duplicates": duplicates,
        "self_arrivals": self_arrivals,
        "unexpected_arrivals": unexpected,
        "unknown_arrivals": unknown,
        "delivery_ratio": delivered as f64 / expected.max(1.0),
        "superseded_ratio": superseded as f64 / expected.max(1.0),
        "delivery_ms": delivery,
        "delivery_cdf_ms": delivery_cdf,
        "put_ms": put,
        "syncs": syncs,
        "sync_errors": sync_errors,
        "first_sync_error": first_sync_error,
        "server_idle": idle_cost,
        "cpu_ms_per_update": cpu_ms_per_update,
        "cpu_ms_per_update_net_of_idle": cpu_ms_per_update_net,
        "cpu_us_per_delivery": cpu_us_per_delivery,
        "bench_cpu_cores": bench_cpu / measured_wall.max(1e-9),
    });
    ctx.finish("presence-fanout", params, results, cost).await
}
