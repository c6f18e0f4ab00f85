//! `kiln plot`: loss and accuracy curves of one or several runs, read back from their
//! TensorBoard event files, drawn to PNG or SVG (by the output's extension) with plotters.

use crate::io::tensorboard::{event_files, read_scalars};
use crate::{Error, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One curve: a run's tag over steps.
pub struct Series {
    pub run: String,
    pub tag: String,
    pub points: Vec<(f64, f64)>,
}

/// The scalar series of each run directory (all its event files, in order).
pub fn load_runs(runs: &[PathBuf]) -> Result<Vec<Series>> {
    let mut out = Vec::new();
    for dir in runs {
        let files = event_files(dir)?;
        if files.is_empty() {
            return Err(Error::format(dir, "no TensorBoard event file (events.out.tfevents.*) in this directory"));
        }
        let mut by_tag: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for f in files {
            for (tag, step, v) in read_scalars(&f)? {
                by_tag.entry(tag).or_default().push((step as f64, v));
            }
        }
        let run =
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
        out.extend(by_tag.into_iter().map(|(tag, points)| Series { run: run.clone(), tag, points }));
    }
    Ok(out)
}

/// Makes a system TrueType font available to plotters (once); errors when none is found.
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
        ];
        let path = std::env::var("KILN_PLOT_FONT").ok().into_iter().chain(candidates.iter().map(|s| s.to_string()));
        for p in path {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps a 'static reference: the font lives for the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found: install fonts-dejavu-core or set KILN_PLOT_FONT to a .ttf file".into())
    })
    .clone()
    .map_err(|m| Error::invalid("plot", m))
}

/// Draws loss curves (tags containing "loss") on the left and accuracy curves (tags
/// containing "accuracy") on the right; `out` ending in .svg gives SVG, else PNG.
pub fn plot(series: &[Series], out: &Path, size: (u32, u32)) -> Result<()> {
    register_font()?;
    let svg = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let result = if svg {
        draw(SVGBackend::new(out, size).into_drawing_area(), series)
    } else {
        draw(BitMapBackend::new(out, size).into_drawing_area(), series)
    };
    result.map_err(|e| Error::invalid("plot", format!("{}: {e}", out.display())))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    for (panel, (title, key)) in panels.iter().zip([("loss", "loss"), ("accuracy", "accuracy")]) {
        let chosen: Vec<&Series> = series.iter().filter(|s| s.tag.contains(key) && !s.points.is_empty()).collect();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for s in &chosen {
            for &(x, y) in &s.points {
                if y.is_finite() {
                    (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
                }
            }
        }
        if chosen.is_empty() || x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("step").label_style(("sans-serif", 13)).draw().map_err(|e| e.to_string())?;
        for (i, s) in chosen.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied().filter(|p| p.1.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{} {}", s.run, s.tag))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        if !chosen.is_empty() {
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}
