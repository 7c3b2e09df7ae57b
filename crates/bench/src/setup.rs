//! Setup shared by the scenarios: users, rooms, initial syncs, long-poll loops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Ctx;
use crate::hs::{Hs, Res, User};
use crate::stats::Rng;

/// Runs `f` over `items` with at most `conc` in flight, in order, ticking `pb`; stops at
/// the first error.
pub async fn run_all<T, R, F, Fut>(
    items: Vec<T>,
    conc: usize,
    pb: &ProgressBar,
    f: F,
) -> Res<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Res<R>>,
{
    let out = stream::iter(items.into_iter().map(|x| {
        let fut = f(x);
        async move {
            let r = fut.await;
            pb.inc(1);
            r
        }
    }))
    .buffered(conc.max(1))
    .try_collect()
    .await;
    pb.finish();
    out
}

/// Registers `n` users named `{prefix}_{tag}{i}`.
pub async fn register_users(ctx: &Ctx, n: usize, tag: &str) -> Res<Vec<User>> {
    register_users_on(ctx, &ctx.hs, ctx.common.shared_secret.clone(), n, tag).await
}

/// [`register_users`] on another server `hs` (with its own shared secret, if any).
pub async fn register_users_on(
    ctx: &Ctx,
    hs: &Hs,
    secret: Option<String>,
    n: usize,
    tag: &str,
) -> Res<Vec<User>> {
    let pb = ctx.bar(n as u64, "register");
    let names: Vec<String> = (0..n)
        .map(|i| format!("{}_{tag}{i:06}", ctx.prefix))
        .collect();
    let password = ctx.common.password.clone();
    run_all(names, ctx.common.concurrency, &pb, |name| {
        let hs = hs.clone();
        let secret = secret.clone();
        let password = password.clone();
        async move {
            match secret {
                Some(s) => hs.register_shared_secret(&s, &name, &password).await,
                None => hs.register(&name, &password).await,
            }
            .map_err(|e| format!("registering {name}: {e}").into())
        }
    })
    .await
}

/// Splits `members` into rooms of `room_size` (a last room of one joins the one before),
/// `rooms_per_user` times, each layer after the first over a shuffled order.
pub fn layout(
    members: &[usize],
    room_size: usize,
    rooms_per_user: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut rooms = Vec::new();
    if room_size < 2 || members.len() < 2 {
        return rooms;
    }
    let mut rng = Rng::new(seed);
    for layer in 0..rooms_per_user.max(1) {
        let mut order = members.to_vec();
        if layer > 0 {
            rng.shuffle(&mut order);
        }
        let mut layer_rooms: Vec<Vec<usize>> =
            order.chunks(room_size).map(|c| c.to_vec()).collect();
        if layer_rooms.len() > 1 && layer_rooms.last().is_some_and(|r| r.len() < 2) {
            let last = layer_rooms.pop().unwrap_or_default();
            if let Some(prev) = layer_rooms.last_mut() {
                prev.extend(last);
            }
        }
        rooms.extend(layer_rooms);
    }
    rooms
}

/// Creates one room per group (the first member creates it) and joins the others.
/// Joins go round-robin over rooms so no room's join queue holds everything up.
pub async fn make_rooms(ctx: &Ctx, users: &[User], groups: &[Vec<usize>]) -> Res<Vec<String>> {
    let pb = ctx.bar(groups.len() as u64, "create rooms");
    let items: Vec<(usize, usize)> = groups.iter().enumerate().map(|(i, g)| (i, g[0])).collect();
    let room_ids = run_all(items, ctx.common.concurrency, &pb, |(i, creator)| {
        let hs = ctx.hs.clone();
        let user = users[creator].clone();
        let name = format!("{} room {i}", ctx.prefix);
        async move { hs.create_room(&user, &name).await }
    })
    .await?;
    let max_len = groups.iter().map(|g| g.len()).max().unwrap_or(0);
    let mut joins = Vec::new();
    for pos in 1..max_len {
        for (r, g) in groups.iter().enumerate() {
            if let Some(&u) = g.get(pos) {
                joins.push((r, u));
            }
        }
    }
    let pb = ctx.bar(joins.len() as u64, "join rooms");
    run_all(joins, ctx.common.concurrency, &pb, |(r, u)| {
        let hs = ctx.hs.clone();
        let user = users[u].clone();
        let room = room_ids[r].clone();
        async move {
            hs.join(&user, &room)
                .await
                .map_err(|e| format!("{} joining {room}: {e}", user.user_id).into())
        }
    })
    .await?;
    Ok(room_ids)
}

/// An initial /sync (timeout 0) per user: gives each the `since` token to long-poll from.
pub async fn initial_syncs(ctx: &Ctx, users: &[User]) -> Res<Vec<String>> {
    initial_syncs_on(ctx, &ctx.hs, users).await
}

/// [`initial_syncs`] on another server `hs`.
pub async fn initial_syncs_on(ctx: &Ctx, hs: &Hs, users: &[User]) -> Res<Vec<String>> {
    let pb = ctx.bar(users.len() as u64, "initial sync");
    run_all(users.to_vec(), ctx.common.concurrency, &pb, |u| {
        let hs = hs.clone();
        async move { Ok(hs.sync_retry(&u, None, 0, None).await?.next_batch) }
    })
    .await
}

/// Counters shared by all long-poll loops.
#[derive(Default)]
pub struct LoopShared {
    /// /sync requests sent and not yet answered.
    pub in_flight: AtomicUsize,
    pub syncs: AtomicU64,
    pub errors: AtomicU64,
    /// Presence events carrying this run's tag.
    pub tagged: AtomicU64,
}

/// What one loop saw.
#[derive(Default)]
pub struct LoopOut {
    /// (update sequence number, microseconds since `base`) per tagged presence arrival.
    pub arrivals: Vec<(u32, u64)>,
    pub syncs: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub struct Loops {
    pub shared: Arc<LoopShared>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<LoopOut>>,
}

impl Loops {
    /// Starts one long-poll loop per user. With `tag`, presence events whose `status_msg`
    /// is `{tag}{seq}` are recorded as arrivals of update `seq`.
    pub fn start(
        hs: &Hs,
        users: &[User],
        since: Vec<String>,
        timeout_ms: u64,
        tag: Option<Arc<str>>,
        base: Instant,
    ) -> Loops {
        let shared = Arc::new(LoopShared::default());
        let (stop, rx) = watch::channel(false);
        let handles = users
            .iter()
            .zip(since)
            .map(|(u, s)| {
                tokio::spawn(sync_loop(
                    hs.clone(),
                    u.clone(),
                    s,
                    timeout_ms,
                    tag.clone(),
                    base,
                    shared.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        Loops {
            shared,
            stop,
            handles,
        }
    }

    /// Waits until every loop has a request out (or `limit` passes), then `settle`.
    pub async fn wait_open(&self, ctx: &Ctx, limit: Duration, settle: Duration) -> bool {
        let n = self.handles.len();
        let pb = ctx.bar(n as u64, "long-polls open");
        let t0 = Instant::now();
        let ok = loop {
            let open = self.shared.in_flight.load(Ordering::Relaxed);
            pb.set_position(open as u64);
            if open >= n {
                break true;
            }
            if t0.elapsed() > limit {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        pb.finish();
        tokio::time::sleep(settle).await;
        ok
    }

    pub async fn stop(self) -> Vec<LoopOut> {
        let _ = self.stop.send(true);
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            out.push(h.await.unwrap_or_default());
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
async fn sync_loop(
    hs: Hs,
    user: User,
    mut since: String,
    timeout_ms: u64,
    tag: Option<Arc<str>>,
    base: Instant,
    shared: Arc<LoopShared>,
    mut stop: watch::Receiver<bool>,
) -> LoopOut {
    let mut out = LoopOut::default();
    let mut seen = std::collections::HashSet::new();
    loop {
        if *stop.borrow() {
            break;
        }
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = tokio::select! {
            r = hs.sync(&user, Some(&since), timeout_ms, None) => Some(r),
            _ = stop.changed() => None,
        };
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(r) = r else { break };
        let now_us = base.elapsed().as_micros() as u64;
        match r {
            Ok(resp) => {
                out.syncs += 1;
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                if let Some(tag) = &tag {
                    for ev in resp.presence_events() {
                        let seq = ev
                            .content
                            .status_msg
                            .as_deref()
                            .and_then(|m| m.strip_prefix(&**tag));
                        if let Some(seq) = seq.and_then(|s| s.parse::<u32>().ok()) {
                            out.arrivals.push((seq, now_us));
                            // Counted for the drain wait: first arrivals of others' updates
                            // (a user's own presence and repeats are recorded, not counted).
                            if ev.sender.as_deref() != Some(user.user_id.as_str())
                                && seen.insert(seq)
                            {
                                shared.tagged.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                since = resp.next_batch;
            }
            Err(e) => {
                out.errors += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_everyone() {
        let members: Vec<usize> = (0..45).collect();
        let rooms = layout(&members, 10, 2, 3);
        // 45 = 4 rooms of 10 + one of 5, twice.
        assert_eq!(rooms.len(), 10);
        for layer in rooms.chunks(5) {
            let mut all: Vec<usize> = layer.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, members);
        }
        let rooms = layout(&(0..21).collect::<Vec<_>>(), 10, 1, 3);
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[1].len(), 11);
    }
}
