//! What the server process costs, read from /proc/<pid>, and what the machine was doing.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Clock ticks per second for utime/stime (`getconf CLK_TCK`, 100 on Linux almost always).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime+stime of a process (all threads), in seconds. `pid` may be "self".
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub fn rss_kib(pid: &str) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn fd_count(pid: &str) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Server cost over one measured phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Cost {
    pub pid: u32,
    pub wall_seconds: f64,
    /// utime+stime of the server during the phase.
    pub cpu_seconds: f64,
    /// cpu_seconds / wall_seconds: how many cores the server kept busy.
    pub cpu_cores: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Highest RSS seen by sampling every 100 ms during the phase.
    pub rss_peak_kib: u64,
    /// VmHWM: the highest RSS since the server started.
    pub rss_hwm_kib: u64,
    /// Open file descriptors (sockets included) at the end of the phase.
    pub fds_end: usize,
}

/// Measures a server process from `start` to `finish`, sampling RSS meanwhile.
pub struct CostMeter {
    pid: u32,
    t0: Instant,
    cpu0: f64,
    rss0: u64,
    stop: watch::Sender<bool>,
    sampler: JoinHandle<u64>,
}

impl CostMeter {
    pub fn start(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let p = pid.to_string();
        let cpu0 = cpu_seconds(&p)?;
        let rss0 = rss_kib(&p).unwrap_or(0);
        let (stop, mut rx) = watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut peak = rss0;
            loop {
                if let Some(r) = rss_kib(&p) {
                    peak = peak.max(r);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = rx.changed() => break,
                }
            }
            if let Some(r) = rss_kib(&p) {
                peak = peak.max(r);
            }
            peak
        });
        Some(CostMeter {
            pid,
            t0: Instant::now(),
            cpu0,
            rss0,
            stop,
            sampler,
        })
    }

    pub async fn finish(self) -> Cost {
        let p = self.pid.to_string();
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(&p).map(|c| c - self.cpu0).unwrap_or(f64::NAN);
        let _ = self.stop.send(true);
        let peak = self.sampler.await.unwrap_or(0);
        Cost {
            pid: self.pid,
            wall_seconds: wall,
            cpu_seconds: cpu,
            cpu_cores: cpu / wall.max(1e-9),
            rss_start_kib: self.rss0,
            rss_end_kib: rss_kib(&p).unwrap_or(0),
            rss_peak_kib: peak,
            rss_hwm_kib: status_kib(&p, "VmHWM:").unwrap_or(0),
            fds_end: fd_count(&p).unwrap_or(0),
        }
    }
}

/// What the machine looked like (so a reader can judge a noisy number).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    /// Cores this process may run on (taskset shrinks it).
    pub bench_cores: usize,
    pub mem_total_kib: u64,
    pub kernel: String,
    /// /proc/loadavg, verbatim.
    pub loadavg: String,
    /// Compiler processes (rustc, cc1*, ld) running: others' builds share the cores.
    pub compilers_running: usize,
}

impl Machine {
    pub fn now() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let mut compilers = 0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(n) = name.to_str() else { continue };
                if !n.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                    let c = comm.trim();
                    if c == "rustc"
                        || c.starts_with("cc1")
                        || c == "ld"
                        || c == "ld.lld"
                        || c == "cc"
                    {
                        compilers += 1;
                    }
                }
            }
        }
        Machine {
            cpu_model,
            cores,
            bench_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mem_total_kib: status_like("/proc/meminfo", "MemTotal:"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            compilers_running: compilers,
        }
    }
}

fn status_like(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib("self").unwrap() > 0);
        assert!(fd_count("self").unwrap() > 0);
    }
}
