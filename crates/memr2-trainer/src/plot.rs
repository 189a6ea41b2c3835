//! Charts of a run, drawn from its `metrics.jsonl` as SVG (and as PNG with the `png` feature):
//! reward, validation F1 with each stage's chosen checkpoint, F1 per category as small
//! multiples, KL, the operation mix, memory size, step time by phase, and the warm start's
//! epochs.
//!
//! Every curve of the curriculum is drawn twice: faint, the value of each step; solid, a
//! centred moving average over [`SMOOTHING_WINDOW`] steps (fewer at the ends) that never
//! reaches across a curriculum stage, since a new horizon changes the scale of the reward.
//! Stage boundaries are drawn and each stage is labelled with its horizon. Legends sit in a
//! column of their own to the right of the axes, never over the data.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::TrainError;
use crate::config::Keep;

/// Steps in the moving average drawn over each curve (centred; fewer at a stage's ends).
pub const SMOOTHING_WINDOW: usize = 5;

/// One line of a panel, in segments that are never joined: one per curriculum stage, so that
/// no line runs from one horizon into the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Its name in the legend.
    pub name: String,
    /// `(x, y)` points in order of x, segment by segment.
    pub segments: Vec<Vec<(f64, f64)>>,
}

impl Line {
    /// Every point of every segment.
    pub fn points(&self) -> impl Iterator<Item = &(f64, f64)> {
        self.segments.iter().flatten()
    }
}

/// A curriculum stage: the steps from `start` to `end` (x coordinates) at one horizon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// Where the stage begins: the step its first validation was taken at.
    pub start: f64,
    /// Its last step.
    pub end: f64,
    /// Sessions per conversation in the stage.
    pub horizon: usize,
}

/// How a panel draws its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Each line raw (faint) with its moving average over it.
    Smoothed,
    /// Each line as measured, with a dot per point (few, meaningful points, such as
    /// validations).
    Points,
    /// The lines stacked on each other as filled areas (parts of a whole, such as a step's
    /// time).
    Stacked,
}

/// One set of axes.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Shown above the panel when a figure has several.
    pub title: String,
    /// The y axis's label, with its unit.
    pub y_label: String,
    /// Its lines; a line's colour follows its name across the figure's panels.
    pub lines: Vec<Line>,
    /// Points to ring, with the legend's name for them.
    pub marks: Vec<(f64, f64)>,
    /// How the lines are drawn.
    pub style: Style,
}

/// A chart file: one or more panels side by side in a grid, sharing their x axis's meaning
/// and the curriculum's stages.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// Its title.
    pub title: String,
    /// The x axis's label.
    pub x_label: String,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
    /// Stages to draw; empty for charts that are not over RL steps.
    pub stages: Vec<Stage>,
    /// What a ringed point means (the legend's entry for [`Panel::marks`]).
    pub mark_name: String,
}

impl Figure {
    fn has_data(&self) -> bool {
        self.panels
            .iter()
            .any(|p| p.lines.iter().any(|l| l.points().next().is_some()))
    }

    /// The distinct line names in order of first appearance: the legend, and the colours.
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for line in self.panels.iter().flat_map(|p| &p.lines) {
            if !names.contains(&line.name.as_str()) {
                names.push(&line.name);
            }
        }
        names
    }
}

/// Ten colours that stay apart from each other (Tableau's).
const COLOURS: [RGBColor; 10] = [
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
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// An opaque lighter shade, for filled areas that lie on each other.
fn pastel(c: RGBColor) -> RGBColor {
    let light = |v: u8| (v as f64 * 0.55 + 255.0 * 0.45) as u8;
    RGBColor(light(c.0), light(c.1), light(c.2))
}

/// The centred moving average of each segment over [`SMOOTHING_WINDOW`] points (fewer at a
/// segment's ends, never reaching into the next segment).
pub fn smooth(segments: &[Vec<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    let half = SMOOTHING_WINDOW / 2;
    segments
        .iter()
        .map(|segment| {
            (0..segment.len())
                .map(|i| {
                    let window = &segment[i.saturating_sub(half)..(i + half + 1).min(segment.len())];
                    let mean = window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64;
                    (segment[i].0, mean)
                })
                .collect()
        })
        .collect()
}

fn bounds(panel: &Panel, stages: &[Stage]) -> Option<(f64, f64, f64, f64)> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let stacked_totals = stacked(panel);
    let all = panel
        .lines
        .iter()
        .flat_map(|l| l.points())
        .chain(stacked_totals.last().into_iter().flatten());
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return None;
    }
    for s in stages {
        x0 = x0.min(s.start);
        x1 = x1.max(s.end);
    }
    if panel.style == Style::Stacked {
        y0 = 0.0;
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    // Room at the top for the stages' labels.
    let top = if stages.is_empty() { pad } else { 2.5 * pad };
    Some((
        x0,
        x1,
        y0 - if panel.style == Style::Stacked { 0.0 } else { pad },
        y1 + top,
    ))
}

/// The running totals of a stacked panel's lines, bottom to top, as one series each (the
/// lines of a stacked panel have the same x values).
fn stacked(panel: &Panel) -> Vec<Vec<(f64, f64)>> {
    if panel.style != Style::Stacked {
        return Vec::new();
    }
    let mut totals: Vec<Vec<(f64, f64)>> = Vec::new();
    for line in &panel.lines {
        let below = totals.last();
        totals.push(
            line.points()
                .enumerate()
                .map(|(i, &(x, y))| (x, y + below.map_or(0.0, |b| b.get(i).map_or(0.0, |p| p.1))))
                .collect(),
        );
    }
    totals
}

type DrawResult<T> = Result<T, String>;

/// A y tick's label with as many decimals as the axis's range needs.
fn tick(y: f64, range: f64) -> String {
    let decimals = if range >= 20.0 {
        0
    } else if range >= 2.0 {
        1
    } else if range >= 0.2 {
        2
    } else {
        3
    };
    format!("{y:.decimals$}")
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    figure: &Figure,
    panel: &Panel,
    names: &[&str],
) -> DrawResult<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let Some((x0, x1, y0, y1)) = bounds(panel, &figure.stages) else {
        return Ok(());
    };
    let mut builder = ChartBuilder::on(area);
    builder.margin(8).x_label_area_size(34).y_label_area_size(58);
    if figure.panels.len() > 1 {
        builder.caption(&panel.title, ("sans-serif", 15));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?;
    // Stages: alternate shading, a boundary line, and the horizon written at the top.
    for (i, stage) in figure.stages.iter().enumerate() {
        if i % 2 == 1 {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(stage.start, y0), (stage.end, y1)],
                    RGBColor(0, 0, 0).mix(0.045).filled(),
                )))
                .map_err(e)?;
        }
        if i > 0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(stage.start, y0), (stage.start, y1)],
                    RGBColor(90, 90, 90).stroke_width(1),
                )))
                .map_err(e)?;
        }
        let style = ("sans-serif", 12)
            .into_font()
            .color(&RGBColor(60, 60, 60))
            .pos(Pos::new(HPos::Left, VPos::Top));
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {} sessions", stage.horizon),
                (stage.start, y1),
                style,
            )))
            .map_err(e)?;
    }
    chart
        .configure_mesh()
        .x_desc(&figure.x_label)
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| tick(*y, y1 - y0))
        .y_desc(&panel.y_label)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(0, 0, 0).mix(0.1))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    let index = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);
    match panel.style {
        Style::Stacked => {
            let totals = stacked(panel);
            // Top layer first, so that each lower layer's fill covers the part below it.
            for (line, total) in panel.lines.iter().zip(&totals).rev() {
                let c = colour(index(&line.name));
                chart
                    .draw_series(AreaSeries::new(total.iter().copied(), 0.0, pastel(c)).border_style(c))
                    .map_err(e)?;
            }
        }
        Style::Smoothed => {
            for line in &panel.lines {
                let c = colour(index(&line.name));
                for segment in &line.segments {
                    chart
                        .draw_series(LineSeries::new(
                            segment.iter().copied(),
                            c.mix(0.3).stroke_width(1),
                        ))
                        .map_err(e)?;
                }
                for segment in smooth(&line.segments) {
                    chart
                        .draw_series(LineSeries::new(segment, c.stroke_width(2)))
                        .map_err(e)?;
                }
            }
        }
        Style::Points => {
            for line in &panel.lines {
                let c = colour(index(&line.name));
                for segment in &line.segments {
                    chart
                        .draw_series(LineSeries::new(segment.iter().copied(), c.stroke_width(2)))
                        .map_err(e)?;
                    chart
                        .draw_series(segment.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(e)?;
                }
            }
        }
    }
    chart
        .draw_series(
            panel
                .marks
                .iter()
                .map(|&p| Circle::new(p, 7, BLACK.stroke_width(2))),
        )
        .map_err(e)?;
    Ok(())
}

/// The legend, in its own column: a swatch and a name per line, then what the faint and
/// solid lines, the rings and the shading mean.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, figure: &Figure) -> DrawResult<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let font = ("sans-serif", 13).into_font();
    let small = ("sans-serif", 11).into_font().color(&RGBColor(70, 70, 70));
    let mut y = 40;
    let stacked = figure.panels.iter().any(|p| p.style == Style::Stacked);
    for (i, name) in figure.names().iter().enumerate() {
        let c = colour(i);
        if stacked {
            area.draw(&Rectangle::new([(6, y - 5), (24, y + 5)], pastel(c).filled()))
                .map_err(e)?;
        } else {
            area.draw(&PathElement::new(vec![(6, y), (24, y)], c.stroke_width(3)))
                .map_err(e)?;
        }
        area.draw(&Text::new(name.to_string(), (30, y - 7), font.clone()))
            .map_err(e)?;
        y += 20;
    }
    y += 10;
    let mut notes: Vec<String> = Vec::new();
    if figure.panels.iter().any(|p| p.style == Style::Smoothed) {
        notes.push("faint: each step".into());
        notes.push(format!("solid: mean of {SMOOTHING_WINDOW} steps,"));
        notes.push("  centred, within a stage".into());
    }
    if figure.stages.len() > 1 {
        notes.push("shading and lines: curriculum".into());
        notes.push("  stages, by horizon".into());
    }
    for text in notes {
        area.draw(&Text::new(text, (6, y), small.clone())).map_err(e)?;
        y += 15;
    }
    if figure.panels.iter().any(|p| !p.marks.is_empty()) {
        area.draw(&Circle::new((12, y + 12), 6, BLACK.stroke_width(2)))
            .map_err(e)?;
        area.draw(&Text::new(figure.mark_name.clone(), (24, y + 5), small.clone()))
            .map_err(e)?;
    }
    Ok(())
}

fn draw_figure<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, figure: &Figure) -> DrawResult<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(&figure.title, ("sans-serif", 19)).map_err(e)?;
    let (width, _) = root.dim_in_pixel();
    let (plots, legend) = root.split_horizontally(width.saturating_sub(200));
    let n = figure.panels.len().max(1);
    let columns = if n <= 3 {
        n
    } else {
        n.div_ceil(n.div_ceil(3)).min(3)
    };
    let rows = n.div_ceil(columns);
    let cells = plots.split_evenly((rows, columns));
    let names = figure.names();
    for (cell, panel) in cells.iter().zip(&figure.panels) {
        draw_panel(cell, figure, panel, &names)?;
    }
    draw_legend(&legend, figure)?;
    root.present().map_err(e)?;
    Ok(())
}

/// The size in pixels a figure is drawn at.
fn size(figure: &Figure) -> (u32, u32) {
    let n = figure.panels.len().max(1);
    let columns = if n <= 3 {
        n
    } else {
        n.div_ceil(n.div_ceil(3)).min(3)
    };
    let rows = n.div_ceil(columns) as u32;
    let width = 200 + if columns == 1 { 640 } else { 360 * columns as u32 };
    (width, 40 + rows * if rows == 1 { 400 } else { 280 })
}

/// Draws a figure into an SVG file; nothing is written for a figure without data.
pub fn write_svg(path: &Path, figure: &Figure) -> Result<bool, TrainError> {
    if !figure.has_data() {
        return Ok(false);
    }
    let root = SVGBackend::new(path, size(figure)).into_drawing_area();
    draw_figure(root, figure).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    Ok(true)
}

/// Rasterises an SVG chart into a PNG at twice its size, with the system's fonts.
#[cfg(feature = "png")]
pub fn svg_to_png(svg: &Path, png: &Path) -> Result<(), TrainError> {
    use resvg::{tiny_skia, usvg};
    let fail = |reason: String| TrainError::Io {
        path: png.to_path_buf(),
        source: std::io::Error::other(reason),
    };
    let text = std::fs::read_to_string(svg).map_err(|source| TrainError::Io {
        path: svg.to_path_buf(),
        source,
    })?;
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // The charts ask for "sans-serif", which fontdb maps to Arial unless told otherwise.
    let families: Vec<String> = fonts
        .faces()
        .flat_map(|face| face.families.iter().map(|(name, _)| name.clone()))
        .collect();
    let preferred = [
        "DejaVu Sans",
        "Liberation Sans",
        "Arial",
        "Helvetica",
        "Noto Sans",
    ];
    let Some(family) = preferred
        .iter()
        .map(|f| f.to_string())
        .find(|f| families.contains(f))
        .or_else(|| families.first().cloned())
    else {
        return Err(fail(
            "no system fonts found to draw the chart's text (install fonts-dejavu-core or any TrueType font)"
                .into(),
        ));
    };
    fonts.set_sans_serif_family(family);
    let tree = usvg::Tree::from_str(&text, &options)
        .map_err(|e| fail(format!("cannot read {}: {e}", svg.display())))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(2 * size.width(), 2 * size.height())
        .ok_or_else(|| fail("empty chart".into()))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(2.0, 2.0),
        &mut pixmap.as_mut(),
    );
    pixmap.save_png(png).map_err(|e| fail(e.to_string()))
}

/// Reads a number at a JSON pointer of a metrics record.
fn at(record: &Value, pointer: &str) -> Option<f64> {
    record
        .pointer(pointer)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

/// A record and the index of the curriculum stage it belongs to (0 outside the curriculum).
#[derive(Clone, Copy, Debug)]
pub struct Staged<'a> {
    /// The stage's index, in the order the log wrote the stages.
    pub stage: usize,
    /// The record.
    pub record: &'a Value,
}

/// A line of `(x, y)` over the records that have both, a segment per stage.
pub fn line(records: &[Staged<'_>], name: &str, x: &str, y: &str, scale: f64) -> Line {
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = None;
    for r in records {
        let (Some(px), Some(py)) = (at(r.record, x), at(r.record, y)) else {
            continue;
        };
        if current != Some(r.stage) {
            segments.push(Vec::new());
            current = Some(r.stage);
        }
        segments.last_mut().expect("pushed").push((px, scale * py));
    }
    Line {
        name: name.to_string(),
        segments,
    }
}

/// A run's metrics records sorted by kind, the curriculum's records with their stage.
#[derive(Clone, Debug, Default)]
pub struct RunRecords<'a> {
    /// The RL steps' records.
    pub steps: Vec<Staged<'a>>,
    /// The curriculum's validations.
    pub validations: Vec<Staged<'a>>,
    /// The warm start's epochs.
    pub sft_epochs: Vec<Staged<'a>>,
    /// The answerer's epochs.
    pub answerer_epochs: Vec<Staged<'a>>,
}

impl<'a> RunRecords<'a> {
    /// Sorts records (one `metrics.jsonl`, in its order) by what wrote them; a new stage
    /// begins wherever the horizon of the curriculum's records changes.
    pub fn of(records: &'a [Value]) -> Self {
        let mut out = Self::default();
        let (mut stage, mut horizon) = (0, None);
        for record in records {
            let is_step = record.get("reward_global").is_some();
            let is_validation = record.get("validation_f1").is_some();
            if is_step || is_validation {
                let h = at(record, "/horizon");
                if horizon.is_some() && h != horizon {
                    stage += 1;
                }
                horizon = h;
                let staged = Staged { stage, record };
                if is_step {
                    out.steps.push(staged);
                } else {
                    out.validations.push(staged);
                }
            } else if record.get("sft_epoch").is_some() {
                out.sft_epochs.push(Staged { stage: 0, record });
            } else if record.get("answerer_epoch").is_some() {
                out.answerer_epochs.push(Staged { stage: 0, record });
            }
        }
        out
    }

    /// The curriculum's stages: from the step the previous one ended at (0 for the first) to
    /// the last step of a step or validation record of the stage.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages: Vec<Stage> = Vec::new();
        for r in self.steps.iter().chain(&self.validations) {
            let (Some(step), Some(horizon)) = (at(r.record, "/step"), at(r.record, "/horizon")) else {
                continue;
            };
            while stages.len() <= r.stage {
                stages.push(Stage {
                    start: f64::MAX,
                    end: f64::MIN,
                    horizon: horizon as usize,
                });
            }
            let s = &mut stages[r.stage];
            s.start = s.start.min(step);
            s.end = s.end.max(step);
        }
        let mut previous_end = 0.0_f64;
        for s in &mut stages {
            if s.start > s.end {
                // A stage with no record with a step (none in practice).
                *s = Stage {
                    start: previous_end,
                    end: previous_end,
                    ..*s
                };
            }
            s.start = s.start.min(previous_end);
            previous_end = s.end;
        }
        stages
    }

    /// Each stage's chosen checkpoint, as `(step, F1)`: keeping the best, its first
    /// validation with the highest F1 (the rule the curriculum picks by); keeping the last
    /// step, its last validation.
    pub fn chosen(&self, keep: Keep) -> Vec<(f64, f64)> {
        let mut best: Vec<Option<(f64, f64)>> = Vec::new();
        for r in &self.validations {
            let (Some(step), Some(f1)) = (at(r.record, "/step"), at(r.record, "/validation_f1")) else {
                continue;
            };
            if best.len() <= r.stage {
                best.resize(r.stage + 1, None);
            }
            if keep == Keep::Last || best[r.stage].is_none_or(|b| f1 > b.1) {
                best[r.stage] = Some((step, f1));
            }
        }
        best.into_iter().flatten().collect()
    }
}

/// The figures of one run, keyed by file stem.
pub fn run_figures(records: &[Value], keep: Keep) -> Vec<(String, Figure)> {
    let r = RunRecords::of(records);
    let stages = r.stages();
    let steps = &r.steps;
    let fig = |title: &str, panels: Vec<Panel>| Figure {
        title: title.to_string(),
        x_label: "RL step".into(),
        panels,
        stages: stages.clone(),
        mark_name: String::new(),
    };
    let panel = |title: &str, y_label: &str, lines: Vec<Line>, style: Style| Panel {
        title: title.to_string(),
        y_label: y_label.to_string(),
        lines,
        marks: Vec::new(),
        style,
    };
    let mut figures = Vec::new();
    figures.push((
        "reward".to_string(),
        fig(
            "Reward per step (mean over samples)",
            vec![panel(
                "reward",
                "reward (F1 - memory penalty)",
                vec![
                    line(steps, "global groups", "/step", "/reward_global/mean", 1.0),
                    line(steps, "local groups", "/step", "/reward_local/mean", 1.0),
                ],
                Style::Smoothed,
            )],
        ),
    ));
    let (title, mark_name) = match keep {
        Keep::Best => (
            "Validation F1: what picks each stage's checkpoint",
            "chosen checkpoint",
        ),
        Keep::Last => (
            "Validation F1 (each stage's last step carried on)",
            "carried on (each stage's last step)",
        ),
    };
    let mut validation = fig(
        title,
        vec![Panel {
            marks: r.chosen(keep).iter().map(|&(x, y)| (x, 100.0 * y)).collect(),
            ..panel(
                "validation",
                "token F1 (%)",
                vec![line(
                    &r.validations,
                    "validation F1",
                    "/step",
                    "/validation_f1",
                    100.0,
                )],
                Style::Points,
            )
        }],
    );
    validation.mark_name = mark_name.into();
    figures.push(("validation".to_string(), validation));
    let mut categories: Vec<String> = steps
        .iter()
        .filter_map(|r| r.record.get("f1_by_category").and_then(Value::as_object))
        .flat_map(|m| m.keys().cloned())
        .collect();
    categories.sort();
    categories.dedup();
    let mut f1_panels = vec![panel(
        "all questions",
        "token F1 (%)",
        vec![line(steps, "all questions", "/step", "/f1", 100.0)],
        Style::Smoothed,
    )];
    for c in &categories {
        let pointer = format!("/f1_by_category/{}", c.replace('~', "~0").replace('/', "~1"));
        f1_panels.push(panel(
            c,
            "token F1 (%)",
            vec![line(steps, c, "/step", &pointer, 100.0)],
            Style::Smoothed,
        ));
    }
    figures.push((
        "f1".to_string(),
        fig(
            "F1 of the global rollouts' final memories, by category",
            f1_panels,
        ),
    ));
    figures.push((
        "kl".to_string(),
        fig(
            "KL to the reference policy",
            vec![panel(
                "kl",
                "KL (nats per token)",
                vec![line(steps, "KL", "/step", "/update/kl", 1.0)],
                Style::Smoothed,
            )],
        ),
    ));
    figures.push((
        "ops".to_string(),
        fig(
            "Memory operations of the global rollouts",
            vec![panel(
                "ops",
                "operations per step",
                ["add", "update", "delete", "noop"]
                    .iter()
                    .map(|op| line(steps, &op.to_uppercase(), "/step", &format!("/ops/{op}"), 1.0))
                    .collect(),
                Style::Smoothed,
            )],
        ),
    ));
    figures.push((
        "memory".to_string(),
        fig(
            "Final memory size (mean over global rollouts)",
            vec![
                panel(
                    "entries",
                    "entries",
                    vec![line(steps, "entries", "/step", "/memory_entries", 1.0)],
                    Style::Smoothed,
                ),
                panel(
                    "tokens",
                    "whitespace tokens",
                    vec![line(steps, "tokens", "/step", "/memory_tokens", 1.0)],
                    Style::Smoothed,
                ),
            ],
        ),
    ));
    // A step's time by phase; what the three phases leave (validation is logged apart).
    let other: Vec<Value> = steps
        .iter()
        .map(|s| s.record)
        .filter_map(|r| {
            let rest = at(r, "/step_s")? - at(r, "/rollout_s")? - at(r, "/scoring_s")? - at(r, "/update_s")?;
            Some(serde_json::json!({"step": at(r, "/step")?, "other_s": rest.max(0.0)}))
        })
        .collect();
    let other: Vec<Staged<'_>> = other
        .iter()
        .zip(steps)
        .map(|(record, s)| Staged {
            stage: s.stage,
            record,
        })
        .collect();
    figures.push((
        "time".to_string(),
        fig(
            "Time per RL step, by phase",
            vec![panel(
                "time",
                "seconds",
                vec![
                    line(steps, "rollout", "/step", "/rollout_s", 1.0),
                    line(steps, "scoring", "/step", "/scoring_s", 1.0),
                    line(steps, "update", "/step", "/update_s", 1.0),
                    line(&other, "other", "/step", "/other_s", 1.0),
                ],
                Style::Stacked,
            )],
        ),
    ));
    let mut warm = Vec::new();
    if !r.sft_epochs.is_empty() {
        warm.push(panel(
            "SFT loss",
            "loss (nats per token)",
            vec![line(&r.sft_epochs, "SFT", "/sft_epoch", "/loss", 1.0)],
            Style::Points,
        ));
        warm.push(panel(
            "extractor on validation",
            "fraction of facts",
            vec![
                line(
                    &r.sft_epochs,
                    "recall",
                    "/sft_epoch",
                    "/validation_extractor_recall",
                    1.0,
                ),
                line(
                    &r.sft_epochs,
                    "precision",
                    "/sft_epoch",
                    "/validation_extractor_precision",
                    1.0,
                ),
            ],
            Style::Points,
        ));
    }
    if !r.answerer_epochs.is_empty() {
        warm.push(panel(
            "answerer loss",
            "loss (nats per token)",
            vec![line(
                &r.answerer_epochs,
                "answerer",
                "/answerer_epoch",
                "/loss",
                1.0,
            )],
            Style::Points,
        ));
        warm.push(panel(
            "answerer on validation",
            "token F1 (%)",
            vec![
                line(
                    &r.answerer_epochs,
                    "oracle memory",
                    "/answerer_epoch",
                    "/validation_oracle_f1",
                    100.0,
                ),
                line(
                    &r.answerer_epochs,
                    "no memory",
                    "/answerer_epoch",
                    "/validation_no_memory_f1",
                    100.0,
                ),
            ],
            Style::Points,
        ));
    }
    figures.push((
        "warm_start".to_string(),
        Figure {
            title: "Warm start and answerer, per epoch".into(),
            x_label: "epoch".into(),
            panels: warm,
            stages: Vec::new(),
            mark_name: String::new(),
        },
    ));
    figures
}

/// Writes figures into `dir` as `STEM.svg` (and `STEM.png` when `png`); returns the SVG
/// files written (figures without data are left out).
pub fn write_figures(
    figures: &[(String, Figure)],
    dir: &Path,
    png: bool,
) -> Result<Vec<PathBuf>, TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (stem, figure) in figures {
        let path = dir.join(format!("{stem}.svg"));
        if write_svg(&path, figure)? {
            if png {
                write_png(&path, &dir.join(format!("{stem}.png")))?;
            }
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(feature = "png")]
fn write_png(svg: &Path, png: &Path) -> Result<(), TrainError> {
    svg_to_png(svg, png)
}

#[cfg(not(feature = "png"))]
fn write_png(_svg: &Path, png: &Path) -> Result<(), TrainError> {
    Err(TrainError::Io {
        path: png.to_path_buf(),
        source: std::io::Error::other(
            "this memr2 was built without PNG support; build it with `--features png`",
        ),
    })
}

/// Writes every chart of a run from its metrics records into `dir`; returns the SVG files.
/// `keep` is the run's `curriculum.keep`, which says which checkpoints the validation chart
/// rings.
pub fn plot_run(records: &[Value], keep: Keep, dir: &Path, png: bool) -> Result<Vec<PathBuf>, TrainError> {
    write_figures(&run_figures(records, keep), dir, png)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The records of a two-stage run (horizons 8 and 16, four steps each, validation every
    /// two steps), with one SFT epoch.
    pub(crate) fn two_stage_records() -> Vec<Value> {
        let mut records = vec![serde_json::json!({"sft_epoch": 1, "loss": 2.5,
            "validation_extractor_recall": 0.4, "validation_extractor_precision": 0.5})];
        let mut step = 0;
        for (stage, horizon) in [8, 16].into_iter().enumerate() {
            let validation = |step: u64, f1: f64| {
                serde_json::json!({"step": step, "horizon": horizon, "validation_sessions": horizon,
                    "validation_f1": f1})
            };
            records.push(validation(step, 0.30 + 0.01 * stage as f64));
            for i in 1..=4u64 {
                step += 1;
                records.push(serde_json::json!({
                    "step": step, "horizon": horizon, "f1": 0.1 * i as f64,
                    "f1_by_category": {"single-hop": 0.2, "multi-hop": 0.1},
                    "reward_global": {"mean": 0.3, "std": 0.1}, "reward_local": {"mean": 0.1, "std": 0.0},
                    "update": {"kl": 0.01}, "ops": {"add": 3, "update": 1, "delete": 0, "noop": 2},
                    "memory_entries": 5.0, "memory_tokens": 40.0,
                    "rollout_s": 2.0, "scoring_s": 1.0, "update_s": 3.0, "step_s": 6.5
                }));
                if i % 2 == 0 {
                    // Stage 1's best is its first later validation; stage 2 ties and keeps the
                    // first.
                    let f1 = if stage == 0 {
                        0.30 + 0.05 * (i as f64)
                    } else {
                        0.31
                    };
                    records.push(validation(step, f1));
                }
            }
        }
        records
    }

    #[test]
    fn stages_and_chosen_checkpoints_follow_the_log() {
        let records = two_stage_records();
        let r = RunRecords::of(&records);
        assert_eq!(
            r.stages(),
            vec![
                Stage {
                    start: 0.0,
                    end: 4.0,
                    horizon: 8
                },
                Stage {
                    start: 4.0,
                    end: 8.0,
                    horizon: 16
                }
            ]
        );
        // Stage 1: 0.30, 0.40, 0.50 -> step 4; stage 2: 0.31, 0.31, 0.31 -> its opening one.
        assert_eq!(r.chosen(Keep::Best), vec![(4.0, 0.5), (4.0, 0.31)]);
        // Keeping the last step: each stage's last validation, whatever its F1.
        assert_eq!(r.chosen(Keep::Last), vec![(4.0, 0.5), (8.0, 0.31)]);
    }

    #[test]
    fn lines_break_between_stages_and_the_moving_average_stays_inside_one() {
        let records: Vec<Value> = (1..=6)
            .map(|s| {
                serde_json::json!({"step": s, "horizon": if s <= 3 { 8 } else { 16 },
                "reward_global": {"mean": if s <= 3 { 1.0 } else { 10.0 }}})
            })
            .collect();
        let r = RunRecords::of(&records);
        let reward = line(&r.steps, "global", "/step", "/reward_global/mean", 1.0);
        assert_eq!(reward.segments.len(), 2);
        let smoothed = smooth(&reward.segments);
        assert!(smoothed[0].iter().all(|p| p.1 == 1.0), "{smoothed:?}");
        assert!(smoothed[1].iter().all(|p| p.1 == 10.0), "{smoothed:?}");
        // Centred: the middle of 1, 2, 3, 4, 5 averages all five, the ends what they reach.
        let ramp = vec![(1..=5).map(|s| (s as f64, s as f64)).collect::<Vec<_>>()];
        let one = smooth(&ramp);
        assert_eq!(one[0][2], (3.0, 3.0));
        assert_eq!(one[0][0], (1.0, 2.0));
    }

    #[test]
    fn every_chart_is_written_and_parses_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let files = plot_run(&two_stage_records(), Keep::Best, dir.path(), false).unwrap();
        let stems: Vec<String> = files
            .iter()
            .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            stems,
            [
                "reward",
                "validation",
                "f1",
                "kl",
                "ops",
                "memory",
                "time",
                "warm_start"
            ]
        );
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(doc.root_element().tag_name().name(), "svg");
        }
        let text = |stem: &str| std::fs::read_to_string(dir.path().join(format!("{stem}.svg"))).unwrap();
        let reward = text("reward");
        assert!(reward.contains("8 sessions") && reward.contains("16 sessions"));
        assert!(text("validation").contains("chosen checkpoint"));
        // Small multiples: a panel per category and one for all questions.
        let f1 = text("f1");
        for title in ["all questions", "single-hop", "multi-hop"] {
            assert!(f1.contains(title), "{title}");
        }
        assert!(text("time").contains("rollout"));
    }

    #[cfg(feature = "png")]
    #[test]
    fn png_copies_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = plot_run(&two_stage_records(), Keep::Best, dir.path(), true).unwrap();
        for svg in files {
            let png = std::fs::read(svg.with_extension("png")).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        }
    }

    #[test]
    fn a_run_without_rl_steps_draws_only_its_warm_start() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![serde_json::json!({"sft_epoch": 1, "loss": 2.0})];
        let files = plot_run(&records, Keep::Best, dir.path(), false).unwrap();
        assert_eq!(files, vec![dir.path().join("warm_start.svg")]);
    }
}
