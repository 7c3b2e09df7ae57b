//! federation-presence: presence updates of users on server A delivered to their room-mates on
//! server B over federation. Measures cross-server delivery latency (PUT on A to the arrival
//! in a B user's `/sync`), what went over the wire per update (transactions, EDUs, presence
//! entries, bytes — counted by a recording proxy in front of B's federation listener, see
//! `fedproxy`), and the CPU per update of both servers (the sender A: `--server-pid`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::Ctx;
use crate::hs::{Hs, Res, User};
use crate::procfs::CostMeter;
use crate::setup::{self, Loops};
use crate::stats::{self, Rng};

#[derive(Args, Debug, Clone)]
pub struct FederationArgs {
    /// Client-server API of server B (the receiver; `--url` is A, the sender).
    #[arg(long)]
    pub url_b: String,
    /// Shared secret for registering users on B (default: `--shared-secret`).
    #[arg(long, env = "PULSE_BENCH_SHARED_SECRET_B", hide_env_values = true)]
    pub shared_secret_b: Option<String>,
    /// PID of server B, for its CPU per update.
    #[arg(long)]
    pub server_pid_b: Option<u32>,
    /// Run the recording proxy here: B's server name must point at this address...
    #[arg(long)]
    pub proxy_listen: Option<SocketAddr>,
    /// ...and it forwards to B's real federation listener, e.g. `https://127.0.0.1:18449`.
    #[arg(long)]
    pub proxy_upstream: Option<String>,
    /// Users in all, half on each server, each long-polling /sync.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Members per room, half from each server.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Presence updates per second, by random users of A (open loop).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of updates.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 30_000)]
    pub sync_timeout_ms: u64,
    /// Seconds with every long-poll open before the updates (lets joins' traffic settle).
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    #[arg(long, default_value_t = 5.0)]
    pub drain_quiet_secs: f64,
    #[arg(long, default_value_t = 60.0)]
    pub drain_max_secs: f64,
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    #[arg(long, default_value_t = 600)]
    pub open_timeout_secs: u64,
}

/// The server name part of a user ID (`@local:name` → `name`).
fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').map_or("", |(_, s)| s)
}

pub async fn run(ctx: &Ctx, a: FederationArgs) -> Res<()> {
    let base = Instant::now();
    let half = a.users / 2;
    let per_room = (a.room_size / 2).max(1);
    if half < per_room {
        return Err("federation-presence needs --users >= --room-size".into());
    }
    let proxy = match (&a.proxy_listen, &a.proxy_upstream) {
        (Some(l), Some(u)) => Some(crate::fedproxy::start(*l, u).await?),
        (None, None) => None,
        _ => return Err("--proxy-listen and --proxy-upstream go together".into()),
    };
    let hs_b = Hs::new(&a.url_b)?;
    ctx.note(&format!(
        "federation-presence {} -> {} ({}): {} users on each, rooms of {per_room}+{per_room}, {}/s for {} s",
        ctx.common.url, a.url_b, ctx.common.label, half, a.rate, a.duration
    ));
    let on_a = setup::register_users(ctx, half, "fa").await?;
    let secret_b = a
        .shared_secret_b
        .clone()
        .or_else(|| ctx.common.shared_secret.clone());
    let on_b = setup::register_users_on(ctx, &hs_b, secret_b, half, "fb").await?;
    let name_a = server_of(&on_a[0].user_id).to_owned();

    // Room r: A users r*per_room.., B users r*per_room.. (created on A, B users join remotely).
    let rooms = half / per_room;
    let room_of = |i: usize| (i / per_room).min(rooms - 1);
    let pb = ctx.bar(rooms as u64, "create rooms");
    let room_ids = setup::run_all((0..rooms).collect(), ctx.common.concurrency, &pb, |r| {
        let hs = ctx.hs.clone();
        let user = on_a[r * per_room].clone();
        let name = format!("{} fed room {r}", ctx.prefix);
        async move { hs.create_room(&user, &name).await }
    })
    .await?;
    let mut local_joins = Vec::new();
    let mut remote_joins = Vec::new();
    for i in 0..half {
        if i % per_room != 0 || room_of(i) * per_room != i {
            local_joins.push(i);
        }
        remote_joins.push(i);
    }
    let pb = ctx.bar(local_joins.len() as u64, "join on A");
    setup::run_all(local_joins, ctx.common.concurrency, &pb, |i| {
        let hs = ctx.hs.clone();
        let user = on_a[i].clone();
        let room = room_ids[room_of(i)].clone();
        async move { hs.join(&user, &room).await }
    })
    .await?;
    // Remote joins. The first B user of each room joins alone (rooms in parallel): two
    // concurrent first joins of one room on B race in the state import and one of them is
    // lost on B (seen 2026-12-03, reported). The others follow, round-robin over rooms.
    let (first_joins, later_joins): (Vec<usize>, Vec<usize>) = remote_joins
        .into_iter()
        .partition(|&i| i % per_room == 0 && i / per_room < rooms);
    let mut later_joins = later_joins;
    later_joins.sort_by_key(|&i| (i % per_room, room_of(i)));
    for (what, joins) in [
        ("first joins from B", first_joins),
        ("joins from B", later_joins),
    ] {
        let pb = ctx.bar(joins.len() as u64, what);
        setup::run_all(joins, ctx.common.concurrency.min(8), &pb, |i| {
            let hs = hs_b.clone();
            let user = on_b[i].clone();
            let room = room_ids[room_of(i)].clone();
            let via = name_a.clone();
            async move {
                hs.join_via(&user, &room, &via)
                    .await
                    .map_err(|e| format!("{} joining {room} via {via}: {e}", user.user_id).into())
            }
        })
        .await?;
    }

    // Receivers of A user i's presence: the B users of its room.
    let receivers: Vec<Vec<u32>> = (0..half)
        .map(|i| {
            (0..half)
                .filter(|&j| room_of(j) == room_of(i))
                .map(|j| j as u32)
                .collect()
        })
        .collect();

    let since_a = setup::initial_syncs(ctx, &on_a).await?;
    let since_b = setup::initial_syncs_on(ctx, &hs_b, &on_b).await?;
    let tag: Arc<str> = Arc::from(format!("pbf {} ", ctx.run_id));
    let loops_a = Loops::start(&ctx.hs, &on_a, since_a, a.sync_timeout_ms, None, base);
    let loops_b = Loops::start(
        &hs_b,
        &on_b,
        since_b,
        a.sync_timeout_ms,
        Some(tag.clone()),
        base,
    );
    let open = Duration::from_secs(a.open_timeout_secs);
    let all_open = loops_a.wait_open(ctx, open, Duration::ZERO).await
        & loops_b
            .wait_open(ctx, open, Duration::from_secs_f64(a.settle_secs))
            .await;

    let total = (a.rate * a.duration).round() as usize;
    let wire0 = proxy.as_ref().map(|p| p.snapshot());
    let meter_a = CostMeter::start(ctx.common.server_pid);
    let meter_b = CostMeter::start(a.server_pid_b);
    let sem = Arc::new(Semaphore::new(a.max_in_flight.max(1)));
    let mut rng = Rng::new(ctx.common.seed.wrapping_add(7));
    let pb = ctx.bar(total as u64, "presence updates");
    let t_drive = Instant::now();
    let mut handles = Vec::with_capacity(total);
    for seq in 0..total {
        let due = t_drive + Duration::from_secs_f64(seq as f64 / a.rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = sem.clone().acquire_owned().await?;
        let u = rng.below(half);
        let hs = ctx.hs.clone();
        let user: User = on_a[u].clone();
        let msg = format!("{tag}{seq}");
        let pb = pb.clone();
        handles.push(tokio::spawn(async move {
            let start_us = base.elapsed().as_micros() as u64;
            let r = hs.set_presence(&user, "online", &msg).await;
            drop(permit);
            pb.inc(1);
            (u, start_us, r.err().map(|e| e.to_string()))
        }));
    }
    let mut updates = Vec::with_capacity(total);
    for h in handles {
        updates.push(h.await?);
    }
    pb.finish();

    let expected_total: u64 = updates
        .iter()
        .filter(|u| u.2.is_none())
        .map(|u| receivers[u.0].len() as u64)
        .sum();
    let t_drain = Instant::now();
    let mut last = loops_b.shared.tagged.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let got = loops_b.shared.tagged.load(Ordering::Relaxed);
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
    let cost_a = match meter_a {
        Some(m) => Some(m.finish().await),
        None => None,
    };
    let cost_b = match meter_b {
        Some(m) => Some(m.finish().await),
        None => None,
    };
    let wire = match (&proxy, &wire0) {
        (Some(p), Some(w0)) => Some(p.snapshot().since(w0)),
        _ => None,
    };
    let _ = loops_a.stop().await;
    let outs = loops_b.stop().await;

    // First arrival of each update at each receiver.
    let mut first: Vec<HashMap<u32, u64>> = vec![HashMap::new(); half];
    for (r, out) in outs.iter().enumerate() {
        for &(seq, t) in &out.arrivals {
            let e = first[r].entry(seq).or_insert(t);
            *e = (*e).min(t);
        }
    }
    // Newest update of each sender seen by each receiver: an update not seen itself but
    // followed by a newer one of the same sender was superseded (latest wins), not lost.
    let mut newest: HashMap<(u32, usize), u32> = HashMap::new();
    for (r, seen) in first.iter().enumerate() {
        for &seq in seen.keys() {
            if let Some((u, _, _)) = updates.get(seq as usize) {
                let e = newest.entry((r as u32, *u)).or_insert(seq);
                *e = (*e).max(seq);
            }
        }
    }
    let mut latencies = Vec::new();
    let (mut missing, mut superseded) = (0u64, 0u64);
    let mut missing_by_receiver: HashMap<u32, u64> = HashMap::new();
    for (seq, (u, start_us, err)) in updates.iter().enumerate() {
        if err.is_some() {
            continue;
        }
        for &r in &receivers[*u] {
            match first[r as usize].get(&(seq as u32)) {
                Some(&t) => latencies.push(t.saturating_sub(*start_us) as f64 / 1000.0),
                None => match newest.get(&(r, *u)) {
                    Some(&n) if n as usize > seq => superseded += 1,
                    _ => {
                        missing += 1;
                        *missing_by_receiver.entry(r).or_default() += 1;
                    }
                },
            }
        }
    }
    let delivered = latencies.len() as u64;
    let delivery = stats::summarize(&mut latencies);
    let delivery_cdf = stats::cdf(&latencies, 1001);
    let updates_ok = updates.iter().filter(|u| u.2.is_none()).count();
    let put_errors = updates.len() - updates_ok;
    let per_update = |x: f64| x / updates_ok.max(1) as f64;
    let cpu_ms =
        |c: &Option<crate::procfs::Cost>| c.as_ref().map(|c| per_update(c.cpu_seconds * 1000.0));
    let wire_json = wire.as_ref().map(|w| {
        let presence_edus = w.edus_by_type.get("m.presence").copied().unwrap_or(0);
        let all_edus: u64 = w.edus_by_type.values().sum();
        json!({
            "counters": w,
            "transactions_per_update": per_update(w.txns as f64),
            "presence_edus_per_update": per_update(presence_edus as f64),
            "edus_per_update": per_update(all_edus as f64),
            "presence_entries_per_update": per_update(w.presence_entries as f64),
            "txn_body_bytes_per_update": per_update(w.txn_body_bytes as f64),
            "request_bytes_per_update": per_update(w.request_bytes as f64),
        })
    });
    ctx.note(&format!(
        "{}: delivered {delivered}/{expected_total}, cross-server p50 {:.1} ms p99 {:.1} ms{}{}",
        ctx.common.label,
        delivery.p50,
        delivery.p99,
        cpu_ms(&cost_a)
            .map(|c| format!("; sender CPU {c:.3} ms/update"))
            .unwrap_or_default(),
        wire.as_ref()
            .map(|w| format!(
                "; {} txns, {} presence entries, {} body bytes",
                w.txns, w.presence_entries, w.txn_body_bytes
            ))
            .unwrap_or_default(),
    ));
    let params = json!({
        "users": half * 2, "users_per_server": half, "room_size": per_room * 2, "rooms": rooms,
        "rate": a.rate, "duration": a.duration, "sync_timeout_ms": a.sync_timeout_ms,
        "proxy": proxy.is_some(), "seed": ctx.common.seed, "url_b": a.url_b,
    });
    let results = json!({
        "all_long_polls_open": all_open,
        "updates_ok": updates_ok,
        "put_errors": put_errors,
        "expected_deliveries": expected_total,
        "delivered": delivered,
        "superseded": superseded,
        "missing": missing,
        "receivers_missing_some": missing_by_receiver.len(),
        "missing_by_receiver": missing_by_receiver
            .iter()
            .map(|(r, n)| (on_b[*r as usize].user_id.clone(), *n))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "delivery_ratio": delivered as f64 / (expected_total.max(1) as f64),
        "delivery_ms": delivery,
        "delivery_cdf_ms": delivery_cdf,
        "wire": wire_json,
        "sender_cpu_ms_per_update": cpu_ms(&cost_a),
        "receiver_cpu_ms_per_update": cpu_ms(&cost_b),
        "receiver_cost": cost_b,
    });
    ctx.finish("federation-presence", params, results, cost_a)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_of_a_user_id() {
        assert_eq!(super::server_of("@a:127.0.0.1:8448"), "127.0.0.1:8448");
        assert_eq!(super::server_of("@a:example.org"), "example.org");
    }
}
