//! `curves.svg`: the training curves as a plain SVG file, drawn by hand (a charting crate would
//! bring far more code than two line charts need).
//!
//! Two panels, one above the other:
//! - loss against update steps: the loss of every step (thin), and each epoch's mean training
//!   loss and validation loss, placed at the epoch's last logged step;
//! - validation top-1 and top-5 accuracy (in percent) against epochs.
//!
//! Without step records the loss panel is drawn against epochs. Values that are not finite
//! leave a gap in their line.

use std::fmt::Write as _;
use std::path::Path;

use super::metrics::{EpochRecord, StepRecord};
use crate::error::Result;
use crate::fsio::write_atomic;

/// Beyond this many step records, consecutive steps are averaged in equal buckets, so that a
/// long run's file stays small and its line readable.
const MAX_STEP_POINTS: usize = 2000;

const WIDTH: f64 = 780.0;
const HEIGHT: f64 = 640.0;
/// Left and right edges of both plot areas; the legend sits right of them.
const PLOT_LEFT: f64 = 70.0;
const PLOT_RIGHT: f64 = 590.0;
const PLOT_HEIGHT: f64 = 220.0;
const LOSS_TOP: f64 = 60.0;
const ACCURACY_TOP: f64 = 370.0;
/// About this many intervals between ticks on each axis.
const TICK_INTERVALS: f64 = 5.0;

/// Writes the curves of `steps` and `epochs` to `path` as SVG, atomically.
pub fn write_curves_svg(path: &Path, steps: &[StepRecord], epochs: &[EpochRecord]) -> Result<()> {
    write_atomic(path, render(steps, epochs).as_bytes())
}

/// One line of a chart; a non-finite `y` breaks the line.
struct Series {
    name: String,
    color: &'static str,
    stroke_width: f64,
    /// Draw a dot at every point (for per-epoch series, which have few points).
    markers: bool,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// An axis's range and where its ticks go.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    /// Digits after the decimal point in tick labels.
    decimals: usize,
}

impl Axis {
    /// A range covering `[lo, hi]` whose ends and ticks fall on 1, 2 or 5 times a power of ten;
    /// `integer` keeps the tick spacing at 1 or more (steps, epochs).
    fn nice(lo: f64, hi: f64, integer: bool) -> Axis {
        let (mut lo, mut hi) = (lo, hi);
        if hi - lo <= 0.0 {
            // A single value: widen around it so that it sits inside the plot.
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let raw = (hi - lo) / TICK_INTERVALS;
        let magnitude = 10f64.powf(raw.log10().floor());
        let mut step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude);
        if integer {
            step = step.max(1.0);
        }
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        Axis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
            decimals,
        }
    }

    /// The tick values, computed by multiplication so that rounding does not drift.
    fn ticks(&self) -> Vec<f64> {
        let count = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=count)
            .map(|k| self.lo + k as f64 * self.step)
            .collect()
    }

    fn label(&self, v: f64) -> String {
        // `+ 0.0` turns a -0 into 0, so that no tick reads "-0".
        format!("{:.*}", self.decimals, v + 0.0)
    }
}

/// A panel: a plot area at `top` with its axes, series, legend and titles.
struct Panel {
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    top: f64,
    x: Axis,
    y: Axis,
    series: Vec<Series>,
    /// Shown in the middle of the plot area when there is nothing to draw.
    note: Option<&'static str>,
}

impl Panel {
    fn sx(&self, x: f64) -> f64 {
        PLOT_LEFT + (x - self.x.lo) / (self.x.hi - self.x.lo) * (PLOT_RIGHT - PLOT_LEFT)
    }

    fn sy(&self, y: f64) -> f64 {
        self.top + PLOT_HEIGHT - (y - self.y.lo) / (self.y.hi - self.y.lo) * PLOT_HEIGHT
    }

    fn draw(&self, svg: &mut String) {
        let bottom = self.top + PLOT_HEIGHT;
        let mid_x = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
        let mid_y = self.top + PLOT_HEIGHT / 2.0;
        // Writing to a String cannot fail, hence the ignored fmt::Results below.
        let _ = writeln!(
            svg,
            r#"<text x="{PLOT_LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            self.top - 12.0,
            self.title
        );
        // Grid lines and tick labels.
        for x in self.x.ticks() {
            let px = self.sx(x);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{bottom:.1}" stroke="#e5e5e5"/>"##,
                self.top
            );
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{bottom:.1}" x2="{px:.1}" y2="{:.1}" stroke="#333"/>"##,
                bottom + 5.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bottom + 18.0,
                self.x.label(x)
            );
        }
        for y in self.y.ticks() {
            let py = self.sy(y);
            let _ = writeln!(
                svg,
                r##"<line x1="{PLOT_LEFT}" y1="{py:.1}" x2="{PLOT_RIGHT}" y2="{py:.1}" stroke="#e5e5e5"/>"##
            );
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{py:.1}" x2="{PLOT_LEFT}" y2="{py:.1}" stroke="#333"/>"##,
                PLOT_LEFT - 5.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                PLOT_LEFT - 8.0,
                py + 4.0,
                self.y.label(y)
            );
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{PLOT_LEFT}" y="{}" width="{}" height="{PLOT_HEIGHT}" fill="none" stroke="#333"/>"##,
            self.top,
            PLOT_RIGHT - PLOT_LEFT
        );
        let _ = writeln!(
            svg,
            r#"<text x="{mid_x}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 38.0,
            self.x_label
        );
        let _ = writeln!(
            svg,
            r#"<text x="18" y="{mid_y}" text-anchor="middle" transform="rotate(-90 18 {mid_y})">{}</text>"#,
            self.y_label
        );
        if let Some(note) = self.note {
            let _ = writeln!(
                svg,
                r##"<text x="{mid_x}" y="{mid_y}" text-anchor="middle" fill="#777">{note}</text>"##
            );
        }
        for series in &self.series {
            self.draw_series(svg, series);
        }
        self.draw_legend(svg);
    }

    fn draw_series(&self, svg: &mut String, series: &Series) {
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in &series.points {
            if !(x.is_finite() && y.is_finite()) {
                pen_down = false;
                continue;
            }
            let command = if pen_down { 'L' } else { 'M' };
            let _ = write!(d, "{command}{:.1},{:.1} ", self.sx(x), self.sy(y));
            pen_down = true;
        }
        if d.is_empty() {
            return;
        }
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round"{dash}/>"#,
            d.trim_end(),
            series.color,
            series.stroke_width
        );
        if series.markers {
            for &(x, y) in &series.points {
                if x.is_finite() && y.is_finite() {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                        self.sx(x),
                        self.sy(y),
                        series.color
                    );
                }
            }
        }
    }

    fn draw_legend(&self, svg: &mut String) {
        let x0 = PLOT_RIGHT + 15.0;
        for (k, series) in self.series.iter().enumerate() {
            let y = self.top + 10.0 + 20.0 * k as f64;
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="{}"{dash}/>"#,
                x0 + 24.0,
                series.color,
                series.stroke_width.max(2.0)
            );
            if series.markers {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{}" cy="{y}" r="3" fill="{}"/>"#,
                    x0 + 12.0,
                    series.color
                );
            }
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">{}</text>"#,
                x0 + 30.0,
                y + 4.0,
                series.name
            );
        }
    }
}

/// The step losses, averaged in buckets when there are more than [`MAX_STEP_POINTS`], with
/// the legend's name for them.
fn step_loss_series(steps: &[StepRecord]) -> Series {
    let bucket = steps.len().div_ceil(MAX_STEP_POINTS).max(1);
    let points = steps
        .chunks(bucket)
        .map(|chunk| {
            let x = chunk.iter().map(|s| s.step as f64).sum::<f64>() / chunk.len() as f64;
            let finite: Vec<f64> = chunk
                .iter()
                .map(|s| s.loss)
                .filter(|l| l.is_finite())
                .collect();
            // A bucket with no finite loss leaves a gap, as a single NaN step does.
            let y = if finite.is_empty() {
                f64::NAN
            } else {
                finite.iter().sum::<f64>() / finite.len() as f64
            };
            (x, y)
        })
        .collect();
    let name = if bucket > 1 {
        format!("train loss (mean of {bucket} steps)")
    } else {
        "train loss (step)".to_string()
    };
    Series {
        name,
        color: "#9ecae1",
        stroke_width: 1.0,
        markers: false,
        dashed: false,
        points,
    }
}

/// The smallest and largest finite x and y over every series, if any point is finite.
fn bounds(series: &[Series]) -> Option<((f64, f64), (f64, f64))> {
    let finite = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let mut out: Option<((f64, f64), (f64, f64))> = None;
    for &(x, y) in finite {
        out = Some(match out {
            None => ((x, x), (y, y)),
            Some(((xl, xh), (yl, yh))) => ((xl.min(x), xh.max(x)), (yl.min(y), yh.max(y))),
        });
    }
    out
}

fn loss_panel(steps: &[StepRecord], epochs: &[EpochRecord]) -> Panel {
    // Epoch points go at the epoch's last logged step, so both kinds share the step axis;
    // without step records the axis is epochs.
    let epoch_x = |e: &EpochRecord| -> f64 {
        if steps.is_empty() {
            return e.epoch as f64;
        }
        steps
            .iter()
            .filter(|s| s.epoch <= e.epoch)
            .map(|s| s.step as f64)
            .fold(f64::NAN, f64::max)
    };
    let mut series = Vec::new();
    if !steps.is_empty() {
        series.push(step_loss_series(steps));
    }
    if !epochs.is_empty() {
        series.push(Series {
            name: "train loss (epoch)".into(),
            color: "#1f77b4",
            stroke_width: 2.0,
            markers: true,
            dashed: false,
            points: epochs.iter().map(|e| (epoch_x(e), e.train_loss)).collect(),
        });
    }
    if epochs.iter().any(|e| e.val_loss.is_some()) {
        series.push(Series {
            name: "val loss (epoch)".into(),
            color: "#d62728",
            stroke_width: 2.0,
            markers: true,
            dashed: false,
            points: epochs
                .iter()
                .map(|e| (epoch_x(e), e.val_loss.unwrap_or(f64::NAN)))
                .collect(),
        });
    }
    let (x_label, note) = if steps.is_empty() {
        ("epoch", "no losses recorded yet")
    } else {
        ("update step", "no finite losses recorded")
    };
    let (x, y, note) = match bounds(&series) {
        Some(((xl, xh), (yl, yh))) => (Axis::nice(xl, xh, true), Axis::nice(yl, yh, false), None),
        None => (
            Axis::nice(1.0, 1.0, true),
            Axis::nice(0.0, 1.0, false),
            Some(note),
        ),
    };
    Panel {
        title: "Loss",
        x_label,
        y_label: "loss",
        top: LOSS_TOP,
        x,
        y,
        series,
        note,
    }
}

fn accuracy_panel(epochs: &[EpochRecord]) -> Panel {
    let percent = |v: Option<f64>| v.map_or(f64::NAN, |v| 100.0 * v);
    let mut series = Vec::new();
    if epochs
        .iter()
        .any(|e| e.val_top1.is_some() || e.val_top5.is_some())
    {
        series.push(Series {
            name: "val top-1".into(),
            color: "#2ca02c",
            stroke_width: 2.0,
            markers: true,
            dashed: false,
            points: epochs
                .iter()
                .map(|e| (e.epoch as f64, percent(e.val_top1)))
                .collect(),
        });
        series.push(Series {
            name: "val top-5".into(),
            color: "#ff7f0e",
            stroke_width: 2.0,
            markers: true,
            dashed: true,
            points: epochs
                .iter()
                .map(|e| (e.epoch as f64, percent(e.val_top5)))
                .collect(),
        });
    }
    let note = if epochs.is_empty() {
        Some("no epoch finished yet")
    } else if series.is_empty() {
        Some("no validation set")
    } else {
        None
    };
    let (first, last) = match (epochs.first(), epochs.last()) {
        (Some(f), Some(l)) => (f.epoch as f64, l.epoch as f64),
        _ => (1.0, 1.0),
    };
    Panel {
        title: "Validation accuracy",
        x_label: "epoch",
        y_label: "accuracy (%)",
        top: ACCURACY_TOP,
        x: Axis::nice(first.min(last), first.max(last), true),
        // Accuracy always on the full 0-100 scale, so that runs compare at a glance.
        y: Axis::nice(0.0, 100.0, false),
        series,
        note,
    }
}

/// The whole SVG document.
fn render(steps: &[StepRecord], epochs: &[EpochRecord]) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" font-size="16" font-weight="bold" text-anchor="middle">Training curves</text>"#,
        WIDTH / 2.0
    );
    loss_panel(steps, epochs).draw(&mut svg);
    accuracy_panel(epochs).draw(&mut svg);
    svg.push_str("</svg>\n");
    svg
}
