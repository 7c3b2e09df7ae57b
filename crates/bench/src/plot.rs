//! `pulse-bench plot`: PNG plots from a directory of JSON results.

use std::path::{Path, PathBuf};

use clap::Args;
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

/// Draws lines; a log axis is drawn as log10 of the value with the value on its ticks.
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
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if !ylog {
        y0 = y0.min(0.0);
    }
    if x1 - x0 < 1e-9 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-9 {
        y1 += 1.0;
    }
    let pad_x = (x1 - x0) * 0.04;
    let pad_y = (y1 - y0) * 0.06;
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 - pad_x)..(x1 + pad_x),
            (if ylog { y0 - pad_y } else { y0 })..(y1 + pad_y),
        )?;
    let xf = move |v: &f64| fmt_tick(if xlog { 10f64.powf(*v) } else { *v });
    let yf = move |v: &f64| fmt_tick(if ylog { 10f64.powf(*v) } else { *v });
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    for (i, (s, p)) in series.iter().zip(&pts).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        if markers {
            chart.draw_series(
                p.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    eprintln!("wrote {}", path.display());
    Ok(())
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
            let mut points: Vec<(f64, f64)> = fan
                .iter()
                .filter(|v| v["label"] == l.as_str())
                .filter_map(|v| {
                    Some((
                        f(&v["params"]["users"])?,
                        f(&v["results"]["cpu_ms_per_update"])?,
                    ))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: l.clone(),
                points,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    draw(
        &a.out_dir.join("presence-cpu-per-update.png"),
        "Server CPU per presence update (utime+stime / updates)",
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
