//! `pulse-bench plot`: PNG plots from a directory of JSON results.

use std::path::{Path, PathBuf};

use clap::Args;
use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;
use serde_json::Value;

use crate::hs::Res;

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// Directory of JSON results (every *.json in it, recursively).
    #[arg(long)]
    pub results: PathBuf,
    /// Where the PNG files go.
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Every result file under `dir`, parsed, sorted by path.
pub fn load(dir: &Path) -> Res<Vec<(PathBuf, Value)>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for p in files {
        let text = std::fs::read_to_string(&p)?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["scenario"].is_string() => out.push((p, v)),
            _ => eprintln!("skipping {}: not a pulse-bench result", p.display()),
        }
    }
    Ok(out)
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// One line of a plot: its name and (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Indices of points drawn as hollow markers (runs where the server did not keep up).
    pub hollow: Vec<usize>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Two significant digits (no more than the value needs).
fn fmt_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let digits = (1 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Draws lines on linear or logarithmic axes.
#[allow(clippy::too_many_arguments)]
pub fn draw(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    xlog: bool,
    ylog: bool,
    markers: bool,
) -> Res<()> {
    // A log axis is drawn as log10 of the value, with ticks at 1-2-5 steps.
    let tx = |v: f64| if xlog { v.max(1e-3).log10() } else { v };
    let ty = |v: f64| if ylog { v.max(1e-3).log10() } else { v };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, y)| (tx(x), ty(y)))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let all: Vec<(f64, f64)> = pts.iter().flatten().copied().collect();
    if all.is_empty() {
        return Ok(());
    }
    let bounds = |vals: &mut dyn Iterator<Item = f64>, log: bool, from_zero: bool| {
        let (mut lo, mut hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        if log {
            // At least a factor of 3 either side of one point, a little margin otherwise.
            let pad = ((hi - lo) * 0.05).max(0.1);
            return (lo - pad, hi + pad);
        }
        if from_zero {
            lo = lo.min(0.0);
        }
        if hi - lo < 1e-9 {
            hi = lo + 1.0;
        }
        let pad = (hi - lo) * 0.05;
        (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
    };
    let (x0, x1) = bounds(&mut all.iter().map(|p| p.0), xlog, false);
    let (y0, y1) = bounds(&mut all.iter().map(|p| p.1), ylog, true);
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels = Labels {
        title,
        x_desc,
        y_desc,
        series,
        pts: &pts,
        markers,
        xlog,
        ylog,
    };
    let axis = |lo: f64, hi: f64, log: bool| Axis {
        lo,
        hi,
        ticks: log.then(|| log_ticks(lo, hi)),
    };
    labels.draw_on(&root, axis(x0, x1, xlog), axis(y0, y1, ylog))?;
    root.present()?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// log10 of the 1-2-5 values between 10^lo and 10^hi (only powers of ten over wide ranges).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let steps: &[f64] = if hi - lo > 5.0 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut out = Vec::new();
    for k in (lo.floor() as i32)..=(hi.ceil() as i32) {
        for m in steps {
            let v = (m * 10f64.powi(k)).log10();
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
    }
    out
}

/// A linear axis whose ticks are either plotters' own or given (log10 of 1-2-5 values).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Option<Vec<f64>>,
}

impl Ranged for Axis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        match &self.ticks {
            Some(_) if hint.weight().allow_light_points() => Vec::new(),
            Some(t) => t.clone(),
            None => plotters::coord::types::RangedCoordf64::from(self.lo..self.hi).key_points(hint),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

struct Labels<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    series: &'a [Series],
    pts: &'a [Vec<(f64, f64)>],
    markers: bool,
    xlog: bool,
    ylog: bool,
}

impl Labels<'_> {
    fn draw_on(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
        x: Axis,
        y: Axis,
    ) -> Res<()> {
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc(self.y_desc)
            .x_label_formatter(&|v: &f64| fmt_tick(if self.xlog { 10f64.powf(*v) } else { *v }))
            .y_label_formatter(&|v: &f64| fmt_tick(if self.ylog { 10f64.powf(*v) } else { *v }))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        for (i, (s, p)) in self.series.iter().zip(self.pts).enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            if self.markers {
                chart.draw_series(p.iter().enumerate().map(|(j, &(x, y))| {
                    if s.hollow.contains(&j) {
                        Circle::new((x, y), 8, color.stroke_width(3))
                    } else {
                        Circle::new((x, y), 5, color.filled())
                    }
                }))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

fn cdf_points(cdf: &Value) -> Vec<(f64, f64)> {
    let Some(q) = cdf.as_array() else {
        return Vec::new();
    };
    let n = q.len();
    if n < 2 {
        return Vec::new();
    }
    q.iter()
        .enumerate()
        .filter_map(|(i, v)| f(v).map(|x| (x, i as f64 / (n - 1) as f64)))
        .collect()
}

pub fn run(a: PlotArgs) -> Res<()> {
    let results = load(&a.results)?;
    std::fs::create_dir_all(&a.out_dir)?;
    let of = |s: &'static str| {
        results
            .iter()
            .filter(move |(_, v)| v["scenario"] == s)
            .map(|(_, v)| v)
    };

    // Presence delivery latency CDF, one line per run.
    let mut fan: Vec<&Value> = of("presence-fanout").collect();
    fan.sort_by_key(|v| {
        (
            v["label"].as_str().unwrap_or("").to_string(),
            v["params"]["users"].as_u64().unwrap_or(0),
        )
    });
    let series: Vec<Series> = fan
        .iter()
        .map(|v| Series {
            hollow: Vec::new(),
            name: format!(
                "{} {} users {}/s",
                v["label"].as_str().unwrap_or("?"),
                v["params"]["users"],
                v["params"]["rate"]
            ),
            points: cdf_points(&v["results"]["delivery_cdf_ms"]),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    draw(
        &a.out_dir.join("presence-latency-cdf.png"),
        "Presence delivery latency (PUT start to /sync return), CDF",
        "latency, ms (log)",
        "fraction of deliveries",
        &series,
        true,
        false,
        false,
    )?;

    // Cross-server presence delivery CDF (federation-presence), one line per run.
    let fed: Vec<&Value> = of("federation-presence").collect();
    let fed_series: Vec<Series> = fed
        .iter()
        .map(|v| Series {
            hollow: Vec::new(),
            name: format!(
                "{} x2, {} users {}/s",
                v["label"].as_str().unwrap_or("?"),
                v["params"]["users"],
                v["params"]["rate"]
            ),
            points: cdf_points(&v["results"]["delivery_cdf_ms"]),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !fed_series.is_empty() {
        draw(
            &a.out_dir.join("federation-presence-cdf.png"),
            "Cross-server presence delivery (PUT on A to /sync on B), CDF",
            "latency, ms (log)",
            "fraction of deliveries",
            &fed_series,
            true,
            false,
            false,
        )?;
    }

    // Server CPU per presence update against users, one line per server.
    let mut labels: Vec<String> = fan
        .iter()
        .filter_map(|v| v["label"].as_str().map(String::from))
        .collect();
    labels.sort();
    labels.dedup();
    let series: Vec<Series> = labels
        .iter()
        .map(|l| {
            let mut points: Vec<(f64, f64, bool)> = fan
                .iter()
                .filter(|v| v["label"] == l.as_str())
                .filter_map(|v| {
                    Some((
                        f(&v["params"]["users"])?,
                        f(&v["results"]["cpu_ms_per_update"])?,
                        !crate::report::kept_up(v),
                    ))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let hollow = points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.2)
                .map(|(j, _)| j)
                .collect();
            Series {
                name: l.clone(),
                points: points.into_iter().map(|(x, y, _)| (x, y)).collect(),
                hollow,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    draw(
        &a.out_dir.join("presence-cpu-per-update.png"),
        "Server CPU per presence update (hollow: server did not keep up)",
        "users (log)",
        "CPU ms per update (log)",
        &series,
        true,
        true,
        true,
    )?;

    // Sync wake-up latency CDF.
    let mut wake: Vec<&Value> = of("sync-wakeup").collect();
    wake.sort_by_key(|v| {
        (
            v["label"].as_str().unwrap_or("").to_string(),
            v["params"]["idle"].as_u64().unwrap_or(0),
        )
    });
    let series: Vec<Series> = wake
        .iter()
        .map(|v| Series {
            hollow: Vec::new(),
            name: format!(
                "{} {} idle long-polls",
                v["label"].as_str().unwrap_or("?"),
                v["params"]["idle"]
            ),
            points: cdf_points(&v["results"]["wakeup_cdf_ms"]),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    draw(
        &a.out_dir.join("sync-wakeup-cdf.png"),
        "Message send to waiting /sync return, CDF",
        "latency, ms (log)",
        "fraction of sends",
        &series,
        true,
        false,
        false,
    )?;

    // Server RSS with K idle long-polls.
    let idle: Vec<&Value> = of("idle-connections").collect();
    let mut labels: Vec<String> = idle
        .iter()
        .filter_map(|v| v["label"].as_str().map(String::from))
        .collect();
    labels.sort();
    labels.dedup();
    let series: Vec<Series> = labels
        .iter()
        .map(|l| {
            let mut points: Vec<(f64, f64)> = idle
                .iter()
                .filter(|v| v["label"] == l.as_str())
                .filter_map(|v| {
                    Some((
                        f(&v["params"]["conns"])?,
                        f(&v["server_cost"]["rss_end_kib"])? / 1024.0,
                    ))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: l.clone(),
                points,
                hollow: Vec::new(),
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    draw(
        &a.out_dir.join("idle-rss.png"),
        "Server RSS with K idle /sync long-polls open",
        "long-polls (log)",
        "RSS, MiB",
        &series,
        true,
        false,
        true,
    )?;
    Ok(())
}
