//! Pictures of runs, as SVG (plotters' SVG backend: text is left to the viewer's fonts, so no
//! font files are needed): latency percentile curves per phase on HdrHistogram's percentile
//! axis (0%, 90%, 99%, 99.9%, ...: each step ten times rarer), and messages per second and
//! p99 latency over the run, one point a second. Several runs on one chart compare them.
//!
//! A run comes from `bench` itself ([`Run::of_report`]), or afterwards from what it wrote:
//! its `--json` report or an `--hgrm` file ([`Run::read`]).

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use thiserror::Error;

use crate::engine::Report;
use crate::engine::stats::METRICS;

#[derive(Debug, Error)]
pub enum PlotError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {why}")]
    Format { path: String, why: String },
    #[error("drawing: {0}")]
    Draw(String),
    #[error("nothing to draw: no latency was recorded")]
    Empty,
}

/// One latency distribution: (percentile in 0..1, milliseconds), rising.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    /// Seconds since the start, at the end of this one.
    pub at: f64,
    pub messages_per_second: f64,
    /// The highest of the cores' p99 over their latest quarter second (see
    /// [`crate::engine::Progress::p99_micros`]).
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub name: String,
    pub curves: Vec<Curve>,
    pub timeline: Vec<Second>,
}

/// The curve of histogram `h` (microseconds), as HdrHistogram's percentile distribution
/// gives it (five steps per halving of what is left).
pub fn curve(label: &str, h: &Histogram<u64>) -> Curve {
    curve_in(label, h, 1000.0)
}

/// The same for a histogram of `per_ms` units a millisecond.
pub fn curve_in<T: hdrhistogram::Counter>(label: &str, h: &Histogram<T>, per_ms: f64) -> Curve {
    let points = h
        .iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / per_ms))
        .collect();
    Curve { label: label.to_owned(), points }
}

impl Run {
    /// A finished bench run: every phase that recorded something, and its timeline.
    pub fn of_report(name: &str, report: &Report, timeline: Vec<Second>) -> Run {
        let curves = METRICS
            .iter()
            .filter(|(metric, _)| !report.stats.histogram(*metric).is_empty())
            .map(|(metric, label)| curve(label, report.stats.histogram(*metric)))
            .collect();
        Run { name: name.to_owned(), curves, timeline }
    }

    /// A run from a file: `bench --json`'s report (`.json`) or an HdrHistogram percentile
    /// distribution (`--hgrm`, any other name). Named by the file's stem.
    pub fn read(path: &Path) -> Result<Run, PlotError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|error| PlotError::Read { path: shown.clone(), error })?;
        let name = path.file_stem().map_or(shown.clone(), |s| s.to_string_lossy().into_owned());
        let run = if path.extension().is_some_and(|e| e == "json") {
            of_json(&name, &text)
        } else {
            of_hgrm(&name, &text)
        };
        run.map_err(|why| PlotError::Format { path: shown, why })
    }
}

/// `bench --json`'s `latency_curves` and `timeline`.
fn of_json(name: &str, text: &str) -> Result<Run, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let curves =
        v["latency_curves"].as_object().ok_or("no `latency_curves`: not a `volley bench --json` report")?;
    let mut run = Run { name: name.to_owned(), curves: Vec::new(), timeline: Vec::new() };
    // In the order the report lists phases, whatever the object's.
    for (_, label) in METRICS {
        let Some(points) = curves.get(label).and_then(|p| p.as_array()) else { continue };
        let points: Option<Vec<(f64, f64)>> =
            points.iter().map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?))).collect();
        let points = points.ok_or_else(|| format!("latency_curves.{label}: not [percentile, ms] pairs"))?;
        run.curves.push(Curve { label: label.to_owned(), points });
    }
    for s in v["timeline"].as_array().into_iter().flatten() {
        let field = |k: &str| s[k].as_f64().ok_or_else(|| format!("timeline: an entry without `{k}`"));
        run.timeline.push(Second {
            at: field("second")?,
            messages_per_second: field("messages_per_second")?,
            p99_ms: field("p99_ms")?,
        });
    }
    Ok(run)
}

/// An HdrHistogram percentile distribution (`Value Percentile TotalCount 1/(1-Percentile)`
/// lines, values in milliseconds): one curve, the message latency.
fn of_hgrm(name: &str, text: &str) -> Result<Run, String> {
    let mut points = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(value), Some(percentile)) = (fields.next(), fields.next()) else { continue };
        // The header and the `#[Mean ...]` lines are not numbers.
        if let (Ok(ms), Ok(p)) = (value.parse::<f64>(), percentile.parse::<f64>()) {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("a percentile of {p}: not a percentile distribution"));
            }
            points.push((p, ms));
        }
    }
    if points.is_empty() {
        return Err("no `Value Percentile` lines: not an HdrHistogram percentile distribution".into());
    }
    Ok(Run {
        name: name.to_owned(),
        curves: vec![Curve { label: "message".into(), points }],
        timeline: Vec::new(),
    })
}

/// The JSON `bench --json` carries for plotting later: `latency_curves` and `timeline`.
pub fn json_fields(run: &Run) -> [(String, String); 2] {
    let mut curves = String::from("{");
    for (i, c) in run.curves.iter().enumerate() {
        let _ = write!(curves, "{}\"{}\":[", if i > 0 { "," } else { "" }, c.label);
        for (j, (p, ms)) in c.points.iter().enumerate() {
            let _ = write!(curves, "{}[{p:.12},{ms:.3}]", if j > 0 { "," } else { "" });
        }
        curves.push(']');
    }
    curves.push('}');
    let mut timeline = String::from("[");
    for (i, s) in run.timeline.iter().enumerate() {
        let _ = write!(
            timeline,
            "{}{{\"second\":{:.3},\"messages_per_second\":{:.1},\"p99_ms\":{:.3}}}",
            if i > 0 { "," } else { "" },
            s.at,
            s.messages_per_second,
            s.p99_ms
        );
    }
    timeline.push(']');
    [("latency_curves".into(), curves), ("timeline".into(), timeline)]
}

/// Where a percentile lies on the axis: how many nines (0.9 is 1, 0.99 is 2), capped at 6.
fn nines(p: f64) -> f64 {
    (1.0 / (1.0 - p).max(1e-6)).log10()
}

fn nines_label(x: &f64) -> String {
    let nines = x.round() as i32;
    if (x - f64::from(nines)).abs() > 1e-6 {
        return String::new();
    }
    match nines {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99.{}%", "9".repeat((n - 2) as usize)).replace("99.%", "99%"),
    }
}

/// An axis value as a person writes it: `450k`, `12`, `2.5`, `0.25`.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const COLOURS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(255, 187, 120),
];

/// The chart: percentile curves on top (every phase of one run; the message latency of each
/// run when comparing), then messages per second and p99 over time when runs have a timeline.
pub fn svg(runs: &[Run]) -> Result<String, PlotError> {
    let comparing = runs.len() > 1;
    let mut lines: Vec<(String, &Curve)> = Vec::new();
    for run in runs {
        for c in &run.curves {
            if c.points.is_empty() {
                continue;
            }
            if !comparing {
                lines.push((c.label.clone(), c));
            } else if c.label == "message" {
                lines.push((run.name.clone(), c));
            }
        }
    }
    if lines.is_empty() {
        return Err(PlotError::Empty);
    }
    let timed: Vec<&Run> = runs.iter().filter(|r| !r.timeline.is_empty()).collect();
    let height = if timed.is_empty() { 560 } else { 1280 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let (top, bottom) = if timed.is_empty() {
            (root.clone(), None)
        } else {
            let (top, rest) = root.split_vertically(560);
            (top, Some(rest))
        };
        let caption =
            if comparing { "message latency by percentile" } else { "latency by percentile, per phase" };
        percentiles(&top, caption, &lines)?;
        if let Some(rest) = bottom {
            let (rate, p99) = rest.split_vertically(360);
            let of = |value: fn(&Second) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
                timed
                    .iter()
                    .map(|r| (r.name.clone(), r.timeline.iter().map(|s| (s.at, value(s))).collect()))
                    .collect()
            };
            over_time(&rate, "messages per second", "msg/s", &of(|s| s.messages_per_second))?;
            over_time(&p99, "p99 latency over the run", "p99 (ms)", &of(|s| s.p99_ms))?;
        }
        root.present().map_err(draw)?;
    }
    Ok(out)
}

fn draw(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn percentiles(area: &Area<'_>, caption: &str, lines: &[(String, &Curve)]) -> Result<(), PlotError> {
    let top_p = lines.iter().flat_map(|(_, c)| c.points.iter().map(|(p, _)| *p)).fold(0.0, f64::max);
    let max_nines = nines(top_p).ceil().clamp(2.0, 6.0);
    let max_ms = lines.iter().flat_map(|(_, c)| c.points.iter().map(|(_, ms)| *ms)).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 26))
        .margin(16)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(80)
        // Headroom above the curves for the legend.
        .build_cartesian_2d(0.0..max_nines, 0.0..(max_ms * (1.1 + 0.08 * lines.len() as f64)).max(0.001))
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_labels(max_nines as usize + 1)
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .y_label_formatter(&|y| number(*y))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(draw)?;
    for (i, (label, c)) in lines.iter().enumerate() {
        let points = c.points.iter().map(|(p, ms)| (nines(*p).min(max_nines), *ms));
        line(&mut chart, i, label, points)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Series `i` of a chart, in its colour, with its legend entry.
fn line(
    chart: &mut Chart<'_, '_>,
    i: usize,
    label: &str,
    points: impl Iterator<Item = (f64, f64)>,
) -> Result<(), PlotError> {
    let colour = COLOURS[i % COLOURS.len()];
    chart
        .draw_series(LineSeries::new(points, colour.stroke_width(2)))
        .map_err(draw)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2)));
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, at: SeriesLabelPosition) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(at)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw)
}

/// Series over time (seconds since the start); a legend when there are several.
fn over_time(
    area: &Area<'_>,
    caption: &str,
    unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    let end = series.iter().flat_map(|(_, points)| points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let top = series.iter().flat_map(|(_, points)| points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..end, 0.0..(top * 1.1).max(1e-3))
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .x_label_formatter(&|x| number(*x))
        .y_label_formatter(&|y| number(*y))
        .y_desc(unit)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(draw)?;
    for (i, (name, points)) in series.iter().enumerate() {
        line(&mut chart, i, name, points.iter().copied())?;
    }
    if series.len() > 1 {
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

/// One second of a campaign: recipients' attempts that ended in it, by outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CampaignSecond {
    pub at: f64,
    pub delivered: f64,
    pub deferred: f64,
    pub bounced: f64,
}

/// A campaign's picture (`send --plot`): attempts per second by outcome, then the queue time
/// (from a recipient's first attempt to its delivery) by percentile for its busiest
/// destinations.
pub fn campaign_svg(seconds: &[CampaignSecond], destinations: &[Curve]) -> Result<String, PlotError> {
    let curves: Vec<(String, &Curve)> =
        destinations.iter().filter(|c| !c.points.is_empty()).map(|c| (c.label.clone(), c)).collect();
    let mut out = String::new();
    {
        let height = if curves.is_empty() { 420 } else { 980 };
        let root = SVGBackend::with_string(&mut out, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let (top, rest) = root.split_vertically(420);
        let outcome = |name: &str, value: fn(&CampaignSecond) -> f64| {
            (name.to_owned(), seconds.iter().map(|s| (s.at, value(s))).collect::<Vec<_>>())
        };
        let series = [
            outcome("delivered", |s| s.delivered),
            outcome("deferred", |s| s.deferred),
            outcome("bounced", |s| s.bounced),
        ];
        over_time(&top, "recipients' attempts per second, by outcome", "per second", &series)?;
        if !curves.is_empty() {
            percentiles(&rest, "queue time by percentile, busiest destinations", &curves)?;
        }
        root.present().map_err(draw)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn run(name: &str) -> Run {
        let h = histogram((1..=10_000).map(|i| 100 + i % 997 * 3));
        Run {
            name: name.into(),
            curves: vec![curve("message", &h), curve("rcpt", &histogram([50, 60, 70]))],
            timeline: (1..=5)
                .map(|s| Second { at: f64::from(s), messages_per_second: 1000.0 * f64::from(s), p99_ms: 2.5 })
                .collect(),
        }
    }

    #[test]
    fn a_campaign_is_drawn_by_outcome_and_destination() {
        let seconds: Vec<CampaignSecond> = (1..=3)
            .map(|s| CampaignSecond { at: f64::from(s), delivered: 900.0, deferred: 50.0, bounced: 5.0 })
            .collect();
        let mut h = Histogram::<u32>::new_with_bounds(1, 86_400_000, 1).unwrap();
        h.record(120).unwrap();
        let picture = campaign_svg(&seconds, &[curve_in("gmail.com", &h, 1.0)]).unwrap();
        for text in ["by outcome", "delivered", "deferred", "bounced", "busiest destinations", "gmail.com"] {
            assert!(picture.contains(text), "{text}");
        }
        let without = campaign_svg(&seconds, &[]).unwrap();
        assert!(!without.contains("busiest destinations"), "no queue times, no such chart");
    }

    #[test]
    fn the_axis_is_in_nines() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9 && (nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), 6.0, "the 100th percentile is drawn at the axis' end");
        let labels: Vec<String> = (0..5).map(|n| nines_label(&f64::from(n))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
        assert_eq!(nines_label(&1.5), "");
        let numbers: Vec<String> = [450_000.0, 12.0, 3.0, 2.5, 0.25].into_iter().map(number).collect();
        assert_eq!(numbers, ["450k", "12", "3", "2.5", "0.25"]);
    }

    #[test]
    fn a_run_draws_every_phase_and_its_timeline_and_reads_back_from_its_json() {
        let r = run("a");
        let picture = svg(std::slice::from_ref(&r)).unwrap();
        assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
        for text in [
            "latency by percentile, per phase",
            "message",
            "rcpt",
            "99.9%",
            "messages per second",
            "p99 (ms)",
        ] {
            assert!(picture.contains(text), "{text}");
        }
        let fields = json_fields(&r);
        let json = format!("{{\"{}\":{},\"{}\":{}}}", fields[0].0, fields[0].1, fields[1].0, fields[1].1);
        let back = of_json("a", &json).unwrap();
        assert_eq!(back.curves.len(), 2);
        assert_eq!(back.timeline, r.timeline);
        let message = back.curves.iter().find(|c| c.label == "message").unwrap();
        assert_eq!(message.points.len(), r.curves[0].points.len());
        assert_eq!(
            back.curves.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
            ["rcpt", "message"],
            "the report's order"
        );
    }

    #[test]
    fn runs_compare_by_their_message_latency_and_a_file_that_is_neither_is_refused() {
        let picture = svg(&[run("before"), run("after")]).unwrap();
        assert!(picture.contains("message latency by percentile"));
        assert!(picture.contains("before") && picture.contains("after"));
        assert!(!picture.contains(">rcpt<"), "only the message curve of each run");
        let hgrm = crate::bench::hgrm(&histogram([1000, 2000, 3000, 40_000]));
        let r = of_hgrm("x", &hgrm).unwrap();
        assert_eq!(r.curves[0].points.last().map(|p| p.0), Some(1.0));
        assert!(of_hgrm("x", "hello\nworld\n").is_err());
        assert!(of_json("x", "{\"delivered\": 3}").is_err(), "a JSON that is not bench's");
        assert!(matches!(
            svg(&[Run { name: "e".into(), curves: vec![], timeline: vec![] }]),
            Err(PlotError::Empty)
        ));
    }
}
