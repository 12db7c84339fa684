//! α per edge over the epochs of a search, to a PNG: one small panel per
//! edge, one line per operation (softmax(α) over the operations left; a
//! dropped operation's line ends where it was dropped). Drawn with
//! `plotters`, like `onebit train --plot`.

use std::path::Path;

use super::search::{EpochRecord, softmax_alive};
use super::space::SearchSpace;
use crate::train::metrics::{FAMILY, FONT};

/// Why the plot cannot be drawn.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", .path.display())]
pub struct PlotError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Draws softmax(α) of every edge of `space` (the original supernet's) over
/// `history` to `path` (`.png`).
///
/// # Errors
///
/// [`PlotError`] for a path not ending in `.png`, an empty history, or a
/// drawing failure.
pub fn plot_alphas(
    path: &Path,
    space: &SearchSpace,
    history: &[EpochRecord],
) -> Result<(), PlotError> {
    use plotters::prelude::*;

    let fail = |message: String| PlotError {
        path: path.to_path_buf(),
        message,
    };
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return Err(fail("a plot file must end in .png".into()));
    }
    if history.is_empty() || space.edges.is_empty() {
        return Err(fail("no epochs or no edges to plot".into()));
    }
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*FONT_OK
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok())
    {
        return Err(fail("the embedded font does not load".into()));
    }
    let n = space.edges.len();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (w, h) = (260u32, 200u32);
    let root =
        BitMapBackend::new(path, (w * cols as u32, h * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let (legend, body) = root.split_vertically(40);
    let palette = [
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
    // The legend: the first edge's labels (every edge of a DARTS cell has
    // the same operation list; panels whose list differs say so in their
    // caption).
    let labels = &space.edges[0].ops;
    let mut x = 10i32;
    for (i, label) in labels.iter().enumerate() {
        let color = palette[i % palette.len()];
        legend
            .draw(&PathElement::new(
                vec![(x, 20), (x + 20, 20)],
                color.stroke_width(3),
            ))
            .map_err(|e| fail(e.to_string()))?;
        legend
            .draw(&Text::new(label.clone(), (x + 24, 12), (FAMILY, 14)))
            .map_err(|e| fail(e.to_string()))?;
        x += 30 + 9 * label.len() as i32;
    }
    let first = history.first().map_or(0, |r| r.epoch) as f64;
    let last = history.last().map_or(1, |r| r.epoch) as f64;
    let x_range = if last > first {
        first..last
    } else {
        first - 0.5..first + 0.5
    };
    // One y range for every panel, up to the largest weight seen, so that
    // panels compare and small movements still show.
    let y_max = history
        .iter()
        .flat_map(|r| space.edges.iter().filter_map(|e| r.alphas.get(&e.choose)))
        .flat_map(|a| softmax_alive(a))
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max)
        .clamp(0.05, 1.0) as f64
        * 1.05;
    let panels = body.split_evenly((rows, cols));
    for (edge, area) in space.edges.iter().zip(panels) {
        let caption = if edge.ops == *labels {
            edge.choose.clone()
        } else {
            format!("{} (own ops)", edge.choose)
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, (FAMILY, 12))
            .margin(6)
            .x_label_area_size(18)
            .y_label_area_size(30)
            .build_cartesian_2d(x_range.clone(), 0.0..y_max)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(4)
            .y_labels(3)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style((FAMILY, 10))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for op in 0..edge.ops.len() {
            let points: Vec<(f64, f64)> = history
                .iter()
                .filter_map(|r| {
                    let p = softmax_alive(r.alphas.get(&edge.choose)?);
                    let v = *p.get(op)?;
                    v.is_finite().then_some((r.epoch as f64, v as f64))
                })
                .collect();
            let color = palette[op % palette.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    root.present().map_err(|e| fail(e.to_string()))
}
