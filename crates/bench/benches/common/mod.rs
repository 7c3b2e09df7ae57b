//! Timing helpers shared by the in-process benchmarks (not a benchmark target itself).
use std::time::{Duration, Instant};

/// CPU time this thread has used (`/proc/thread-self/schedstat`; zero where unavailable).
pub fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Calls `f` until it has used at least `budget` of CPU (or `max_calls` calls), and returns
/// the mean CPU time per call and the median wall time per call. (`schedstat` is exact but
/// only updated at scheduler events, so one short call cannot be timed with it; the mean over
/// a long run can. Wall time is an upper bound of CPU time for this single-threaded work.)
pub fn measure<T>(
    budget: Duration,
    max_calls: usize,
    mut f: impl FnMut() -> T,
) -> (Duration, Duration, T) {
    let mut walls = Vec::new();
    let cpu_started = thread_cpu();
    let mut last = None;
    while walls.len() < max_calls.max(1)
        && (walls.is_empty() || thread_cpu() - cpu_started < budget)
    {
        let started = Instant::now();
        last = Some(std::hint::black_box(f()));
        walls.push(started.elapsed());
    }
    let cpu = (thread_cpu() - cpu_started) / walls.len() as u32;
    walls.sort();
    let median = walls[walls.len() / 2];
    match last {
        Some(last) => (cpu, median, last),
        None => unreachable!("the loop runs at least once"),
    }
}
