//! Subcommand `plot`: draws send → deliver latency (p50 and p99, log scale) against offered
//! load as a PNG, a pair of lines per system, from the JSON that `dm` and `sweep` print.
//!
//! It exists so that the latency-versus-load figure in the docs is drawn from the published
//! JSON files by the tool that measured them, with no spreadsheet or script in between:
//! anyone can redraw it from the same files and get the same picture, and the knee of each
//! system (where latency leaves the floor) is visible at a glance, which the tables hide.
//!
//! Text needs a font file (`--font`), read at run time: plotters' pure-Rust `ab_glyph` text
//! does not look for system fonts, and its `ttf` alternative would link freetype and
//! fontconfig into a load tool for the sake of a few labels.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow, bail};
use plotters::{element::DashedPathElement, prelude::*, style::FontStyle};
use serde::Deserialize;
use serde_json::Value;

use crate::report::DmReport;

/// Where Debian's `fonts-dejavu-core` puts its sans-serif font.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The family name every text style below asks plotters for.
const FAMILY: &str = "sans-serif";

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// TrueType or OpenType font for the text (on Debian the default is in package
    /// `fonts-dejavu-core`).
    #[arg(long, default_value = DEFAULT_FONT)]
    pub font: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 800)]
    pub height: u32,
    /// JSON printed by `sweep` or `dm`, or a JSON array of `dm` reports; runs from all files
    /// are grouped by system.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// One run: its offered load and its send → deliver percentiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub offered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The runs of one system, by increasing offered load.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub system: String,
    pub points: Vec<Point>,
}

/// What `sweep` prints, as far as the plot needs it.
#[derive(Deserialize)]
struct Sweep {
    runs: Vec<DmReport>,
    half_peak: Option<DmReport>,
}

/// Reads the inputs, draws the PNG and returns what it drew.
pub fn run(options: &Options) -> anyhow::Result<Vec<Series>> {
    let mut runs = Vec::new();
    for path in &options.inputs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        runs.extend(parse(&text).with_context(|| {
            format!(
                "{}: expected the JSON of `sweep` or `dm`, or an array of `dm` reports",
                path.display()
            )
        })?);
    }
    let series = group(&runs);
    load_font(&options.font)?;
    draw(&series, &options.out, (options.width, options.height))?;
    Ok(series)
}

/// The runs in one input: a sweep (its runs and the half-peak run), one report, or an array.
fn parse(text: &str) -> anyhow::Result<Vec<DmReport>> {
    let value: Value = serde_json::from_str(text)?;
    Ok(match value {
        Value::Array(_) => serde_json::from_value(value)?,
        Value::Object(ref fields) if fields.contains_key("runs") => {
            let sweep: Sweep = serde_json::from_value(value)?;
            sweep.runs.into_iter().chain(sweep.half_peak).collect()
        }
        _ => vec![serde_json::from_value(value)?],
    })
}

/// Groups runs by system (in name order), leaving out runs that delivered nothing: they
/// have no latency, and zero has no place on a log scale.
fn group(runs: &[DmReport]) -> Vec<Series> {
    let mut by_system: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
    for run in runs.iter().filter(|run| run.send_to_deliver_ms.count > 0) {
        by_system.entry(&run.system).or_default().push(Point {
            offered_per_s: run.offered_per_s,
            p50_ms: run.send_to_deliver_ms.p50,
            p99_ms: run.send_to_deliver_ms.p99,
        });
    }
    by_system
        .into_iter()
        .map(|(system, mut points)| {
            points.sort_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
            Series {
                system: system.to_owned(),
                points,
            }
        })
        .collect()
}

/// Registers the font at `path` as the one all text is drawn with. Plotters keeps fonts in
/// a process-wide table of `'static` bytes, so the bytes are leaked (once per call; a run
/// makes one call).
pub fn load_font(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "font {}: cannot read it; pass --font with a .ttf file (on Debian the default \
             comes with package fonts-dejavu-core)",
            path.display()
        )
    })?;
    plotters::style::register_font(
        FAMILY,
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("font {}: not a TrueType or OpenType font", path.display()))
}

/// Draws `series` into a PNG of `size` (width, height) pixels at `out`. Text needs
/// [`load_font`] first.
pub fn draw(series: &[Series], out: &Path, size: (u32, u32)) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| &s.points);
    let Some(x_max) = points().map(|p| p.offered_per_s).reduce(f64::max) else {
        bail!("nothing to plot: no run delivered a message");
    };
    let y_min = points()
        .map(|p| p.p50_ms.min(p.p99_ms))
        .fold(f64::INFINITY, f64::min);
    let y_max = points().map(|p| p.p50_ms.max(p.p99_ms)).fold(0.0, f64::max);

    let root = BitMapBackend::new(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Send → deliver latency versus offered load", (FAMILY, 28))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max * 1.05, (y_min / 2.0..y_max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered load (messages/s)")
        .y_desc("send → deliver latency (ms, log scale)")
        .x_label_formatter(&|rate| format!("{rate:.0}"))
        .y_label_formatter(&|ms| format!("{ms}"))
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 20))
        .draw()?;

    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line = color.stroke_width(2);
        let p50 = s.points.iter().map(|p| (p.offered_per_s, p.p50_ms));
        let p99 = s.points.iter().map(|p| (p.offered_per_s, p.p99_ms));
        chart
            .draw_series(LineSeries::new(p50.clone(), line))?
            .label(format!("{} p50", s.system))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], line));
        chart
            .draw_series(DashedLineSeries::new(p99.clone(), 10, 6, line))?
            .label(format!("{} p99", s.system))
            .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 30, y)], 10, 6, line));
        chart.draw_series(p50.chain(p99).map(|at| Circle::new(at, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(offered_per_s: f64, p50_ms: f64, p99_ms: f64) -> Point {
        Point {
            offered_per_s,
            p50_ms,
            p99_ms,
        }
    }

    #[test]
    fn draws_a_png_of_the_requested_size() {
        load_font(Path::new(DEFAULT_FONT)).unwrap();
        let series = [
            Series {
                system: "natter".into(),
                points: vec![point(500.0, 2.0, 6.0), point(2000.0, 3.0, 12.0)],
            },
            Series {
                system: "peer".into(),
                points: vec![point(500.0, 4.0, 20.0), point(2000.0, 40.0, 900.0)],
            },
        ];
        let out =
            std::env::temp_dir().join(format!("natter-bench-plot-{}.png", std::process::id()));
        draw(&series, &out, (640, 480)).unwrap();
        let png = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!((be(16), be(20)), (640, 480));
    }

    #[test]
    fn reads_sweeps_single_reports_and_arrays_and_groups_by_system() {
        let report = |system: &str, offered: f64, p50: f64, count: u64| {
            serde_json::to_value(DmReport {
                system: system.into(),
                offered_per_s: offered,
                send_to_deliver_ms: crate::report::Latency {
                    count,
                    p50,
                    p99: p50 * 3.0,
                    ..Default::default()
                },
                ..Default::default()
            })
            .unwrap()
        };
        let sweep = serde_json::json!({
            "runs": [report("natter", 1000.0, 2.0, 10), report("natter", 4000.0, 9.0, 10)],
            "peak_per_s": 4000.0,
            "half_peak": report("natter", 2000.0, 3.0, 10),
        });
        let array = Value::Array(vec![
            report("peer", 500.0, 5.0, 10),
            report("peer", 1000.0, 0.0, 0),
        ]);
        let mut runs = Vec::new();
        for input in [sweep, array, report("natter", 500.0, 1.0, 10)] {
            runs.extend(parse(&input.to_string()).unwrap());
        }
        assert_eq!(
            group(&runs),
            [
                Series {
                    system: "natter".into(),
                    points: vec![
                        point(500.0, 1.0, 3.0),
                        point(1000.0, 2.0, 6.0),
                        point(2000.0, 3.0, 9.0),
                        point(4000.0, 9.0, 27.0),
                    ],
                },
                Series {
                    system: "peer".into(),
                    points: vec![point(500.0, 5.0, 15.0)],
                },
            ]
        );
        assert!(parse(r#"{"runs": 3}"#).is_err());
    }

    #[test]
    fn a_missing_font_says_which_file() {
        let error = load_font(Path::new("/nonexistent/font.ttf")).unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/font.ttf"));
    }
}
