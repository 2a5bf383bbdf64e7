//! Charts of a rollout: canary vs baseline success rate and latency over time, as SVG (for the
//! portal) and PNG (for chat messages, which cannot show SVG).
//!
//! This module owns the picture and nothing else: it takes a time series that the rollout
//! controller has already collected ([`RolloutChart`]) and draws it. The SVG is written by hand
//! (it is plain markup, and hand-written markup keeps every element predictable for tests and
//! styling); the PNG is that same SVG rasterized by `resvg` in pure Rust. No system library or
//! system font is used: the text is set in a Latin subset of DejaVu Sans compiled into the
//! binary (`controller/assets/fonts/DejaVuSans-subset.ttf`, 44 KB, Bitstream Vera license with
//! DejaVu's public-domain changes — see `LICENSE-DejaVu.txt` beside it), so a chart looks the
//! same on every machine. The subset was made with fonttools:
//! `pyftsubset DejaVuSans.ttf --unicodes="U+0020-007E,U+00A0-00BF,U+00D7,U+2013,U+2014,U+2018-201D,U+2022,U+2026,U+2190-2193,U+2212,U+2264,U+2265,U+00B5,U+03BC" --layout-features=kern,liga --name-IDs='*' --name-languages='*'`.
//!
//! Rendering is bounded whatever the input: series longer than [`MAX_POINTS`] are averaged
//! down, at most [`MAX_ANNOTATIONS`] markers are drawn, labels are truncated, and empty series,
//! missing or non-finite values and single points are drawn rather than refused.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use resvg::tiny_skia;
use resvg::usvg;

/// Width of the chart in pixels (SVG user units and PNG pixels alike).
pub const WIDTH: u32 = 960;
/// Height of the chart in pixels.
pub const HEIGHT: u32 = 540;
/// Series longer than this are averaged down to this many points before drawing: more would
/// not be visible at this width and would only slow rendering.
pub const MAX_POINTS: usize = 480;
/// At most this many annotations are drawn (the most important kinds first).
pub const MAX_ANNOTATIONS: usize = 32;

/// The embedded font. See the module documentation for its origin and license.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
/// The family name inside [`FONT`]; browsers viewing the SVG fall back to similar fonts.
const FONT_FAMILY: &str = "DejaVu Sans";
const FONT_STACK: &str = "'DejaVu Sans', Verdana, Arial, sans-serif";

const CANARY_COLOUR: &str = "#e8590c";
const BASELINE_COLOUR: &str = "#1971c2";
const FAILURE_COLOUR: &str = "#c92a2a";
const PROMOTION_COLOUR: &str = "#2b8a3e";
const CONFIRM_COLOUR: &str = "#e67700";
const STEP_COLOUR: &str = "#868e96";
const INK: &str = "#212529";
const MUTED: &str = "#495057";
const GRID: &str = "#dee2e6";
const LABEL_MAX_CHARS: usize = 60;

/// One sample of the rollout, typically one analysis interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChartPoint {
    /// When the sample was taken, in milliseconds since the Unix epoch.
    pub t_unix_ms: u64,
    /// Canary success rate in percent, if the canary had traffic.
    pub canary_success_pct: Option<f64>,
    /// Baseline (stable) success rate in percent.
    pub baseline_success_pct: Option<f64>,
    /// Canary p99 latency in milliseconds.
    pub canary_p99_ms: Option<f64>,
    /// Baseline p99 latency in milliseconds.
    pub baseline_p99_ms: Option<f64>,
    /// The canary's traffic weight (percent) when the sample was taken.
    pub canary_weight: u32,
}

/// What an [`Annotation`] marks; decides its colour and whether it is labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnnotationKind {
    /// The analysis failed (drawn like a rollback).
    Failure,
    /// Traffic went back to the baseline.
    Rollback,
    /// The canary became the new stable version.
    Promotion,
    /// The rollout started waiting for a person to confirm.
    Confirmation,
    /// The canary weight changed (the shaded bands already show weights, so this is a thin line).
    Step,
}

/// A vertical marker at an instant of the rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    /// When, in milliseconds since the Unix epoch.
    pub t_unix_ms: u64,
    /// What happened.
    pub kind: AnnotationKind,
    /// Short text drawn next to the marker, e.g. `rollback: errors`. May be empty.
    pub label: String,
}

/// Everything one chart shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutChart {
    /// The service rolled out, e.g. `payments`.
    pub service: String,
    /// The new version, e.g. `v2`.
    pub canary_version: String,
    /// The version it is compared with, e.g. `v1`.
    pub baseline_version: String,
    /// An optional second title line, e.g. `rolled back at step 2 (25%): errors`.
    pub subtitle: Option<String>,
    /// The samples, in any order.
    pub points: Vec<ChartPoint>,
    /// Markers: step changes, the failure, the rollback or promotion.
    pub annotations: Vec<Annotation>,
}

/// Why a PNG could not be produced. The SVG itself cannot fail.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The SVG we wrote was refused by the rasterizer (a bug in this module).
    #[error("the chart's SVG could not be parsed: {0}")]
    Svg(#[from] usvg::Error),
    /// The pixel buffer could not be allocated.
    #[error("could not allocate a {WIDTH}x{HEIGHT} image")]
    Pixmap,
    /// PNG encoding failed.
    #[error("could not encode the chart as PNG: {0}")]
    Png(String),
}

/// Renders the chart as a standalone SVG document of [`WIDTH`]×[`HEIGHT`].
pub fn render_svg(chart: &RolloutChart) -> String {
    Renderer::new(chart).svg()
}

/// Renders the same chart as a PNG of [`WIDTH`]×[`HEIGHT`] pixels.
pub fn render_png(chart: &RolloutChart) -> Result<Vec<u8>, ChartError> {
    svg_to_png(&render_svg(chart))
}

/// Rasterizes an SVG produced by [`render_svg`] (for callers that keep the SVG anyway).
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, ChartError> {
    let options = usvg::Options {
        font_family: FONT_FAMILY.to_owned(),
        fontdb: font_database(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options)?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or(ChartError::Pixmap)?;
    resvg::render(
        &tree,
        tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| ChartError::Png(e.to_string()))
}

/// The font database, built once: parsing the font on every chart would cost more than
/// drawing it.
fn font_database() -> Arc<usvg::fontdb::Database> {
    static DB: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_font_data(FONT.to_vec());
        db.set_sans_serif_family(FONT_FAMILY);
        Arc::new(db)
    })
    .clone()
}

/// Escapes text for SVG content and attribute values, dropping characters XML 1.0 forbids
/// (control characters would make the whole document unparseable).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Shortens a label to `max` characters with an ellipsis, so long names cannot push text
/// off the chart.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Reads one series' value from a sample.
type Accessor = fn(&ChartPoint) -> Option<f64>;

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// Sorts the samples and, above [`MAX_POINTS`], averages consecutive groups.
fn prepare_points(points: &[ChartPoint]) -> Vec<ChartPoint> {
    let mut sorted: Vec<ChartPoint> = points
        .iter()
        .map(|p| ChartPoint {
            canary_success_pct: finite(p.canary_success_pct),
            baseline_success_pct: finite(p.baseline_success_pct),
            canary_p99_ms: finite(p.canary_p99_ms),
            baseline_p99_ms: finite(p.baseline_p99_ms),
            ..p.clone()
        })
        .collect();
    sorted.sort_by_key(|p| p.t_unix_ms);
    if sorted.len() <= MAX_POINTS {
        return sorted;
    }
    let group = sorted.len().div_ceil(MAX_POINTS);
    sorted
        .chunks(group)
        .map(|chunk| {
            let mean = |f: fn(&ChartPoint) -> Option<f64>| {
                let (sum, n) = chunk
                    .iter()
                    .filter_map(f)
                    .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
                (n > 0).then(|| sum / f64::from(n))
            };
            let t_sum: u128 = chunk.iter().map(|p| u128::from(p.t_unix_ms)).sum();
            let t = u64::try_from(t_sum / chunk.len().max(1) as u128).unwrap_or(u64::MAX);
            ChartPoint {
                t_unix_ms: t,
                canary_success_pct: mean(|p| p.canary_success_pct),
                baseline_success_pct: mean(|p| p.baseline_success_pct),
                canary_p99_ms: mean(|p| p.canary_p99_ms),
                baseline_p99_ms: mean(|p| p.baseline_p99_ms),
                canary_weight: chunk.iter().map(|p| p.canary_weight).max().unwrap_or(0),
            }
        })
        .collect()
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Decimals needed to print multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        let d = -step.log10().floor();
        if d.is_finite() {
            (d as usize).min(4)
        } else {
            0
        }
    }
}

/// A value axis: its range (rounded out to whole ticks) and the tick step.
#[derive(Clone, Copy, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, lo + 1.0)
        };
        let step = nice_step(hi - lo, 4.0);
        Axis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    /// Success rate: the data's range padded a little, within 0-100 unless the data is not.
    fn success(values: &[f64]) -> Axis {
        let Some((lo, hi)) = min_max(values) else {
            return Axis::new(90.0, 100.0);
        };
        let pad = ((hi - lo) * 0.1).max(0.5);
        let top = if hi <= 100.0 {
            (hi + pad).min(100.0)
        } else {
            hi + pad
        };
        Axis::new((lo - pad).max(0.0), top)
    }

    /// Latency: from zero, so differences are not exaggerated, to a little above the maximum.
    fn latency(values: &[f64]) -> Axis {
        let hi = min_max(values).map_or(100.0, |(_, hi)| hi);
        let lo = min_max(values).map_or(0.0, |(lo, _)| lo.min(0.0));
        Axis::new(lo, if hi > 0.0 { hi * 1.1 } else { 1.0 })
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = ((self.hi - self.lo) / self.step).round();
        let n = if n.is_finite() {
            (n as usize).min(20)
        } else {
            0
        };
        (0..=n).map(move |i| self.lo + self.step * i as f64)
    }
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// The rectangle of one plot, in pixels, and its value axis.
#[derive(Clone, Copy, Debug)]
struct Panel {
    top: f64,
    bottom: f64,
    axis: Axis,
}

impl Panel {
    fn y(&self, v: f64) -> f64 {
        let span = self.axis.hi - self.axis.lo;
        if span <= 0.0 {
            return self.bottom;
        }
        self.bottom - (v - self.axis.lo) / span * (self.bottom - self.top)
    }
}

const LEFT: f64 = 68.0;
const RIGHT: f64 = WIDTH as f64 - 24.0;
const TOP_PANEL: (f64, f64) = (84.0, 280.0);
const BOTTOM_PANEL: (f64, f64) = (312.0, 490.0);

struct Renderer<'a> {
    chart: &'a RolloutChart,
    points: Vec<ChartPoint>,
    t0: u64,
    t1: u64,
    out: String,
}

impl<'a> Renderer<'a> {
    fn new(chart: &'a RolloutChart) -> Renderer<'a> {
        let points = prepare_points(&chart.points);
        let times = points
            .iter()
            .map(|p| p.t_unix_ms)
            .chain(chart.annotations.iter().map(|a| a.t_unix_ms));
        let (t0, t1) = times.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
        // Nothing to place in time, or a single instant: show a minute around it so the axis
        // still has ticks and a lone point sits in the middle.
        let (t0, t1) = if t0 > t1 {
            (0, 60_000)
        } else if t0 == t1 {
            (t0.saturating_sub(30_000), t1.saturating_add(30_000))
        } else {
            (t0, t1)
        };
        Renderer {
            chart,
            points,
            t0,
            t1,
            out: String::with_capacity(64 * 1024),
        }
    }

    fn x(&self, t: u64) -> f64 {
        let span = (self.t1 - self.t0) as f64;
        LEFT + (t.saturating_sub(self.t0)) as f64 / span * (RIGHT - LEFT)
    }

    fn svg(mut self) -> String {
        let success: Vec<f64> = self
            .points
            .iter()
            .flat_map(|p| [p.canary_success_pct, p.baseline_success_pct])
            .flatten()
            .collect();
        let latency: Vec<f64> = self
            .points
            .iter()
            .flat_map(|p| [p.canary_p99_ms, p.baseline_p99_ms])
            .flatten()
            .collect();
        let top = Panel {
            top: TOP_PANEL.0,
            bottom: TOP_PANEL.1,
            axis: Axis::success(&success),
        };
        let bottom = Panel {
            top: BOTTOM_PANEL.0,
            bottom: BOTTOM_PANEL.1,
            axis: Axis::latency(&latency),
        };

        let _ = write!(
            self.out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT_STACK}">"#
        );
        let _ = write!(
            self.out,
            r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
        );
        self.titles();
        self.step_bands(&[top, bottom]);
        let panels: [(Panel, &str, &str, Accessor, Accessor); 2] = [
            (
                top,
                "success",
                "Success rate (%)",
                |p| p.canary_success_pct,
                |p| p.baseline_success_pct,
            ),
            (
                bottom,
                "latency",
                "p99 latency (ms)",
                |p| p.canary_p99_ms,
                |p| p.baseline_p99_ms,
            ),
        ];
        for (panel, name, unit_title, canary, baseline) in panels {
            self.value_axis(&panel, unit_title);
            if success.is_empty() && latency.is_empty() && name == "success" {
                self.centred_note(&panel, "no data yet");
            }
            // Baseline first, so the canary (the thing being judged) is drawn on top.
            let baseline_id = format!("baseline-{name}");
            self.series(&panel, &baseline_id, BASELINE_COLOUR, baseline);
            self.series(&panel, &format!("canary-{name}"), CANARY_COLOUR, canary);
        }
        self.time_axis(&bottom);
        self.annotations(&top, &bottom);
        self.out.push_str("</svg>");
        self.out
    }

    fn titles(&mut self) {
        let c = self.chart;
        let title = truncate(
            &format!(
                "{}: {} (canary) vs {} (baseline)",
                c.service, c.canary_version, c.baseline_version
            ),
            70,
        );
        let _ = write!(
            self.out,
            r#"<text x="{LEFT}" y="30" font-size="19" fill="{INK}">{}</text>"#,
            escape(&title)
        );
        if let Some(sub) = &c.subtitle {
            let _ = write!(
                self.out,
                r#"<text x="{LEFT}" y="52" font-size="13" fill="{MUTED}">{}</text>"#,
                escape(&truncate(sub, 100))
            );
        }
        // Legend, right-aligned on the title line. Widths are estimated (0.6 em a character)
        // since SVG has no layout; DejaVu Sans is close to that on average.
        let items = [
            (
                CANARY_COLOUR,
                format!("canary {}", truncate(&c.canary_version, 16)),
            ),
            (
                BASELINE_COLOUR,
                format!("baseline {}", truncate(&c.baseline_version, 16)),
            ),
        ];
        let mut x = RIGHT;
        for (colour, label) in items.iter().rev() {
            let width = label.chars().count() as f64 * 7.6;
            x -= width;
            let _ = write!(
                self.out,
                r#"<text x="{x:.1}" y="30" font-size="13" fill="{INK}">{}</text>"#,
                escape(label)
            );
            x -= 30.0;
            let _ = write!(
                self.out,
                r#"<line x1="{x:.1}" y1="25.5" x2="{:.1}" y2="25.5" stroke="{colour}" stroke-width="3"/>"#,
                x + 24.0
            );
            x -= 20.0;
        }
    }

    /// Shades each run of one canary weight, in both panels, and labels it in the top one.
    fn step_bands(&mut self, panels: &[Panel; 2]) {
        let mut runs: Vec<(u64, u64, u32)> = Vec::new();
        for p in &self.points {
            match runs.last_mut() {
                Some(run) if run.2 == p.canary_weight => run.1 = p.t_unix_ms,
                Some(run) => {
                    run.1 = p.t_unix_ms;
                    runs.push((p.t_unix_ms, p.t_unix_ms, p.canary_weight));
                }
                None => runs.push((p.t_unix_ms, p.t_unix_ms, p.canary_weight)),
            }
        }
        if let Some(last) = runs.last_mut() {
            last.1 = self.t1;
        }
        for (i, (start, end, weight)) in runs.iter().enumerate() {
            let (x0, x1) = (self.x(*start), self.x(*end));
            let fill = if i % 2 == 0 { "#f1f3f5" } else { "#f8f9fa" };
            for panel in panels {
                let _ = write!(
                    self.out,
                    r#"<rect class="step" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"#,
                    panel.top,
                    (x1 - x0).max(0.0),
                    panel.bottom - panel.top
                );
            }
            let label = if i == 0 {
                format!("canary {weight}%")
            } else {
                format!("{weight}%")
            };
            if x1 - x0 >= label.chars().count() as f64 * 6.5 + 8.0 {
                let _ = write!(
                    self.out,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{MUTED}">{}</text>"#,
                    x0 + 4.0,
                    panels[0].top - 6.0,
                    escape(&label)
                );
            }
        }
    }

    fn value_axis(&mut self, panel: &Panel, title: &str) {
        let d = decimals(panel.axis.step);
        let ticks: Vec<f64> = panel.axis.ticks().collect();
        for v in ticks {
            let y = panel.y(v);
            let _ = write!(
                self.out,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="{GRID}" stroke-width="1"/><text x="{:.1}" y="{:.1}" font-size="11" fill="{MUTED}" text-anchor="end">{v:.d$}</text>"#,
                LEFT - 6.0,
                y + 4.0
            );
        }
        // The panel title runs up the left edge, where it can never cover a line.
        let (tx, ty) = (16.0, (panel.top + panel.bottom) / 2.0);
        let _ = write!(
            self.out,
            r#"<text x="{tx:.1}" y="{ty:.1}" transform="rotate(-90 {tx:.1} {ty:.1})" font-size="12" fill="{INK}" text-anchor="middle">{}</text>"#,
            escape(title)
        );
        // Left and bottom axis lines over the grid.
        let _ = write!(
            self.out,
            r#"<path d="M{LEFT},{:.1} V{:.1} H{RIGHT}" fill="none" stroke="{MUTED}" stroke-width="1"/>"#,
            panel.top, panel.bottom
        );
    }

    fn centred_note(&mut self, panel: &Panel, text: &str) {
        let _ = write!(
            self.out,
            r#"<text x="{:.1}" y="{:.1}" font-size="14" fill="{MUTED}" text-anchor="middle">{}</text>"#,
            (LEFT + RIGHT) / 2.0,
            (panel.top + panel.bottom) / 2.0,
            escape(text)
        );
    }

    /// One line, broken where values are missing; isolated samples get a dot so they show.
    fn series(&mut self, panel: &Panel, id: &str, colour: &str, value: Accessor) {
        let mut d = String::new();
        let mut dots = String::new();
        let mut run: Vec<(f64, f64)> = Vec::new();
        let flush = |run: &mut Vec<(f64, f64)>, d: &mut String, dots: &mut String| {
            match run.as_slice() {
                [] => {}
                [(x, y)] => {
                    let _ = write!(
                        dots,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
                    );
                }
                [first, rest @ ..] => {
                    let _ = write!(d, "M{:.1},{:.1}", first.0, first.1);
                    for (x, y) in rest {
                        let _ = write!(d, " L{x:.1},{y:.1}");
                    }
                }
            }
            run.clear();
        };
        for p in &self.points {
            match value(p) {
                Some(v) => run.push((self.x(p.t_unix_ms), panel.y(v))),
                None => flush(&mut run, &mut d, &mut dots),
            }
        }
        flush(&mut run, &mut d, &mut dots);
        let _ = write!(self.out, r#"<g id="{id}">"#);
        if !d.is_empty() {
            let _ = write!(
                self.out,
                r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="2.2" stroke-linejoin="round" stroke-linecap="round"/>"#
            );
        }
        self.out.push_str(&dots);
        self.out.push_str("</g>");
    }

    fn time_axis(&mut self, panel: &Panel) {
        const STEPS_S: [u64; 18] = [
            1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
            86400,
        ];
        let span_s = (self.t1 - self.t0) / 1000;
        let step = STEPS_S
            .iter()
            .copied()
            .find(|s| span_s / s <= 8)
            .unwrap_or(86400 * ((span_s / 86400 / 8) + 1));
        let hours = span_s >= 3600;
        let mut k = 0u64;
        while k * step <= span_s && k <= 40 {
            let t = self.t0 + k * step * 1000;
            let x = self.x(t);
            let s = k * step;
            let label = if hours {
                format!("{}:{:02}", s / 3600, (s % 3600) / 60)
            } else {
                format!("{}:{:02}", s / 60, s % 60)
            };
            let _ = write!(
                self.out,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{MUTED}"/><text x="{x:.1}" y="{:.1}" font-size="11" fill="{MUTED}" text-anchor="middle">{label}</text>"#,
                panel.bottom,
                panel.bottom + 5.0,
                panel.bottom + 18.0
            );
            k += 1;
        }
        let caption = if hours {
            "time since start (h:mm)"
        } else {
            "time since start (m:ss)"
        };
        let _ = write!(
            self.out,
            r#"<text x="{RIGHT}" y="{:.1}" font-size="11" fill="{MUTED}" text-anchor="end">{caption}</text>"#,
            panel.bottom + 36.0
        );
    }

    fn annotations(&mut self, top: &Panel, bottom: &Panel) {
        let mut list: Vec<&Annotation> = self.chart.annotations.iter().collect();
        // Keep the important markers when there are too many, and draw them last (on top).
        list.sort_by_key(|a| std::cmp::Reverse(a.kind));
        let skip = list.len().saturating_sub(MAX_ANNOTATIONS);
        for a in list.into_iter().skip(skip) {
            let x = self.x(a.t_unix_ms);
            let (colour, width, dash, class) = match a.kind {
                AnnotationKind::Failure | AnnotationKind::Rollback => {
                    (FAILURE_COLOUR, 2.0, "6 3", "rollback")
                }
                AnnotationKind::Promotion => (PROMOTION_COLOUR, 2.0, "6 3", "promotion"),
                AnnotationKind::Confirmation => (CONFIRM_COLOUR, 1.5, "4 3", "confirmation"),
                AnnotationKind::Step => (STEP_COLOUR, 1.0, "2 3", "step-change"),
            };
            let _ = write!(
                self.out,
                r#"<g class="{class}"><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="{width}" stroke-dasharray="{dash}"/>"#,
                top.top, bottom.bottom
            );
            if !a.label.is_empty() && a.kind != AnnotationKind::Step {
                let label = truncate(&a.label, LABEL_MAX_CHARS);
                // Labels near the right edge run leftwards so they stay inside the chart.
                let (lx, anchor) = if x > (LEFT + RIGHT) * 0.6 {
                    (x - 5.0, "end")
                } else {
                    (x + 5.0, "start")
                };
                let _ = write!(
                    self.out,
                    // Above the plot, beside the step labels; a white halo keeps it readable anyway.
                    r##"<text x="{lx:.1}" y="{:.1}" font-size="12" fill="{colour}" text-anchor="{anchor}" stroke="#ffffff" stroke-width="3" paint-order="stroke">{}</text>"##,
                    top.top - 6.0,
                    escape(&label)
                );
            }
            self.out.push_str("</g>");
        }
    }
}

#[cfg(test)]
mod tests;
