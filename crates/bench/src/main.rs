//! pulse-bench: drives any Matrix homeserver over the client-server API and measures what
//! presence costs. See docs/benchmarks.md for the scenarios and how to run them.

mod fanout;
mod federation;
mod fedproxy;
mod hs;
mod idle;
mod plot;
mod populate;
mod procfs;
mod report;
mod setup;
mod stats;
mod wakeup;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hs::{Hs, Res};
use crate::procfs::{Cost, Machine};

#[derive(Parser)]
#[command(
    name = "pulse-bench",
    version,
    about = "Load generator for Matrix homeservers: what presence costs"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Base URL of the homeserver's client-server API.
    #[arg(
        long,
        global = true,
        env = "PULSE_BENCH_URL",
        default_value = "http://127.0.0.1:8008"
    )]
    pub url: String,
    /// Name of the server in results and plots (e.g. pulse, synapse).
    #[arg(long, global = true, default_value = "server")]
    pub label: String,
    /// PID of the server process: its CPU time and RSS are read from /proc/<pid>.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Register users with Synapse-style shared-secret admin registration instead of
    /// open m.login.dummy registration.
    #[arg(
        long,
        global = true,
        env = "PULSE_BENCH_SHARED_SECRET",
        hide_env_values = true
    )]
    pub shared_secret: Option<String>,
    /// Localpart prefix for the users this run registers (default: unique per run).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    #[arg(long, global = true, default_value = "pulse-bench-password")]
    pub password: String,
    /// Requests in flight during setup (registration, rooms, joins, initial syncs).
    #[arg(long, global = true, default_value_t = 16)]
    pub concurrency: usize,
    /// Write the JSON result here (default: stdout).
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Seed for room layout and for which user updates presence.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Free text kept with the result, e.g. which build of the server this was.
    #[arg(long, global = true)]
    pub note: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// N users in rooms long-poll /sync; a driver sets presence for random users at a fixed
    /// rate; every update is matched to its arrival at every room-mate.
    PresenceFanout(fanout::FanoutArgs),
    /// Users on two federating servers share rooms; users of A set presence at a fixed rate;
    /// measures the delivery to their room-mates on B, the transactions/EDUs/bytes per update
    /// (through a recording proxy in front of B) and both servers' CPU per update.
    FederationPresence(federation::FederationArgs),
    /// Latency from a message send to another user's waiting /sync returning, with K idle
    /// long-polls open from other users.
    SyncWakeup(wakeup::WakeupArgs),
    /// Server memory and CPU with K /sync long-polls held open.
    IdleConnections(idle::IdleArgs),
    /// Fill the server with messages (e.g. 100,000 events) for the start-up measurement.
    Populate(populate::PopulateArgs),
    /// Poll /versions until the server answers; reports the time since --since-unix-ns.
    WaitReady(populate::ReadyArgs),
    /// PNG plots from JSON results.
    Plot(plot::PlotArgs),
    /// Markdown tables from JSON results, written between markers in a document.
    Report(report::ReportArgs),
}

/// One scenario's JSON result.
#[derive(Serialize, Deserialize, Debug)]
pub struct Output {
    pub tool: String,
    pub scenario: String,
    pub label: String,
    pub url: String,
    pub run_id: String,
    pub started_unix: u64,
    /// The command line that produced this result (secrets redacted).
    pub argv: Vec<String>,
    pub machine_start: Machine,
    pub machine_end: Machine,
    /// `server` from /_matrix/federation/v1/version and `versions` from /versions.
    pub server: Value,
    pub params: Value,
    pub results: Value,
    pub server_cost: Option<Cost>,
    /// Seconds the load generator itself spent on CPU during the whole run.
    pub bench_cpu_seconds: f64,
    pub wall_seconds: f64,
    /// `--note`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What every scenario gets: the client, options, a run ID, progress bars.
pub struct Ctx {
    pub hs: Hs,
    pub common: Common,
    pub run_id: String,
    pub prefix: String,
    started: SystemTime,
    machine_start: Machine,
    cpu_start: f64,
}

impl Ctx {
    fn new(common: Common) -> Res<Self> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        // Short, lowercase, unique enough: seconds within ~11 days plus the pid.
        let run_id = format!(
            "{:x}{:x}",
            now.as_secs() % 1_000_000,
            std::process::id() % 4096
        );
        let prefix = common
            .prefix
            .clone()
            .unwrap_or_else(|| format!("pb{run_id}"));
        Ok(Ctx {
            hs: Hs::new(&common.url)?,
            common,
            run_id,
            prefix,
            started: SystemTime::now(),
            machine_start: Machine::now(),
            cpu_start: procfs::cpu_seconds("self").unwrap_or(0.0),
        })
    }

    pub fn bar(&self, len: u64, msg: &'static str) -> ProgressBar {
        if self.common.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("valid template"),
        );
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    }

    pub fn spinner(&self, msg: String) -> ProgressBar {
        if self.common.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("valid template"),
        );
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    }

    pub fn note(&self, msg: &str) {
        if !self.common.quiet {
            eprintln!("{msg}");
        }
    }

    /// Assembles and writes the result (to --out or stdout); prints a one-line summary.
    pub async fn finish(
        &self,
        scenario: &str,
        params: Value,
        results: Value,
        server_cost: Option<Cost>,
    ) -> Res<()> {
        let mut server = serde_json::json!({});
        if let Some(v) = self.hs.server_version().await {
            server["server"] = v;
        }
        if let Ok(v) = self.hs.versions(Duration::from_secs(5)).await {
            server["versions"] = v["versions"].clone();
        }
        let out = Output {
            tool: concat!("pulse-bench ", env!("CARGO_PKG_VERSION")).to_string(),
            scenario: scenario.to_string(),
            label: self.common.label.clone(),
            url: self.common.url.clone(),
            run_id: self.run_id.clone(),
            started_unix: self.started.duration_since(UNIX_EPOCH)?.as_secs(),
            argv: redacted_argv(),
            machine_start: self.machine_start.clone(),
            machine_end: Machine::now(),
            server,
            params,
            results,
            server_cost,
            bench_cpu_seconds: procfs::cpu_seconds("self").unwrap_or(0.0) - self.cpu_start,
            wall_seconds: self.started.elapsed()?.as_secs_f64(),
            note: self.common.note.clone(),
        };
        let text = serde_json::to_string_pretty(&out)?;
        match &self.common.out {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(path, text + "\n")?;
                eprintln!("result written to {}", path.display());
            }
            None => println!("{text}"),
        }
        Ok(())
    }
}

/// argv with the value of --shared-secret (and --password) replaced.
fn redacted_argv() -> Vec<String> {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in std::env::args() {
        if hide_next {
            out.push("REDACTED".to_string());
            hide_next = false;
            continue;
        }
        if a == "--shared-secret" || a == "--password" {
            hide_next = true;
            out.push(a);
        } else if let Some((k, _)) = a
            .split_once('=')
            .filter(|(k, _)| *k == "--shared-secret" || *k == "--password")
        {
            out.push(format!("{k}=REDACTED"));
        } else {
            out.push(a);
        }
    }
    if let Some(first) = out.first_mut() {
        // Print the binary the way a reader would run it.
        if first.ends_with("pulse-bench") {
            *first = "pulse-bench".to_string();
        }
    }
    out
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: Res<()> = rt.block_on(async move {
        match cli.cmd {
            Cmd::Plot(a) => plot::run(a),
            Cmd::Report(a) => report::run(a),
            cmd => {
                let ctx = Ctx::new(cli.common)?;
                match cmd {
                    Cmd::PresenceFanout(a) => fanout::run(&ctx, a).await,
                    Cmd::FederationPresence(a) => federation::run(&ctx, a).await,
                    Cmd::SyncWakeup(a) => wakeup::run(&ctx, a).await,
                    Cmd::IdleConnections(a) => idle::run(&ctx, a).await,
                    Cmd::Populate(a) => populate::run(&ctx, a).await,
                    Cmd::WaitReady(a) => populate::wait_ready(&ctx, a).await,
                    Cmd::Plot(_) | Cmd::Report(_) => unreachable!(),
                }
            }
        }
    });
    // Long-polls still open would keep the runtime's shutdown waiting: don't wait.
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("pulse-bench: {e}");
        std::process::exit(1);
    }
}
