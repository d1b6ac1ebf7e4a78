//! Plots with plotters, each as PNG and SVG: the cumulative fraction of nodes holding an advert over time
//! (`delivery`), and convergence time and bytes per node against N next to a fitted c·log N (`scaling`). Text
//! needs a TrueType font: DejaVu Sans from `fonts-dejavu-core`, or the file in `$METAC_SIM_FONT`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Row, Summary};

const SIZE: (u32, u32) = (960, 600);
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the font once; plotters draws no text without it.
fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var_os("METAC_SIM_FONT")
            .map(PathBuf::from)
            .or_else(|| FONTS.iter().map(PathBuf::from).find(|p| p.is_file()))
            .ok_or_else(|| {
                format!(
                    "no font for the plots: install the Debian package fonts-dejavu-core (looked in {}) or set \
                     METAC_SIM_FONT to a .ttf file",
                    FONTS.join(", ")
                )
            })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read font {}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A cumulative curve from per-node times: (ms, fraction), at most ~1000 points.
fn cumulative(times: &[Option<u64>]) -> Vec<(f64, f64)> {
    let n = times.len().max(1) as f64;
    let mut got: Vec<u64> = times.iter().flatten().copied().collect();
    got.sort_unstable();
    let step = (got.len() / 1000).max(1);
    let mut pts = vec![(0.0, 0.0)];
    for (k, t) in got.iter().enumerate() {
        if k.is_multiple_of(step) || k + 1 == got.len() {
            pts.push((*t as f64 / 1000.0, (k + 1) as f64 / n));
        }
    }
    pts
}

/// `delivery.png` and `delivery.svg`: fraction of nodes holding the new advert over time since its publication,
/// and (after a partition) both sides' adverts since the heal.
pub fn delivery(dir: &Path, rows: &[Row], s: &Summary) -> Result<()> {
    font()?;
    let counted: Vec<&Row> = rows.iter().filter(|r| r.alive).collect();
    let mut series = vec![(
        "new advert, from its publication",
        cumulative(&counted.iter().map(|r| r.delivered).collect::<Vec<_>>()),
    )];
    if s.heal.is_some() {
        series.push((
            "partition adverts, from the heal",
            cumulative(&counted.iter().map(|r| r.heal).collect::<Vec<_>>()),
        ));
    }
    let xmax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(1.0, f64::max) * 1.05;
    let title = format!("{} {}: {} nodes", s.source, s.scenario, s.nodes);
    let draw = |root: DrawingArea<_, Shift>| -> Result<()> { draw_delivery(root, &title, &series, xmax) };
    draw(BitMapBackend::new(&dir.join("delivery.png"), SIZE).into_drawing_area())?;
    draw_svg(&dir.join("delivery.svg"), |root| draw_delivery(root, &title, &series, xmax))
}

fn draw_svg(path: &Path, f: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Result<()>) -> Result<()> {
    let mut svg = String::new();
    f(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area())?;
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plotting failed: {err:?}")
}

const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

fn draw_delivery<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    xmax: f64,
) -> Result<()> {
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, 0f64..1.02f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("fraction of live nodes holding it")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (k, (label, pts)) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        // Steps: the fraction holds until the next node gets it.
        let mut steps = Vec::with_capacity(pts.len() * 2);
        for w in pts.windows(2) {
            steps.push(w[0]);
            steps.push((w[1].0, w[0].1));
        }
        steps.extend(pts.last());
        chart
            .draw_series(LineSeries::new(steps, c.stroke_width(2)))
            .map_err(e)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// One point of a sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScalePoint {
    /// Nodes.
    pub nodes: usize,
    /// Milliseconds until 50 %, 99 % and 100 % of the nodes held the new advert.
    pub t50_ms: f64,
    /// 99 %.
    pub t99_ms: f64,
    /// 100 % (`NaN` never happens in a sweep that converged; a run that did not is plotted at its 99 %).
    pub t100_ms: f64,
    /// Mean bytes sent per node over the run.
    pub bytes_per_node: f64,
}

/// The c that fits y = c·ln(N) best (least squares).
pub fn fit_log(points: &[(f64, f64)]) -> f64 {
    let num: f64 = points.iter().map(|(n, y)| y * n.ln()).sum();
    let den: f64 = points.iter().map(|(n, _)| n.ln() * n.ln()).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// `scaling.png` and `scaling.svg`: convergence time and bytes per node against N (log scale), each with the
/// fitted c·log N.
pub fn scaling(dir: &Path, pts: &[ScalePoint], title: &str) -> Result<()> {
    font()?;
    if pts.is_empty() {
        bail!("a sweep needs at least one size");
    }
    draw_scaling(BitMapBackend::new(&dir.join("scaling.png"), SIZE).into_drawing_area(), pts, title)?;
    draw_svg(&dir.join("scaling.svg"), |root| draw_scaling(root, pts, title))
}

fn draw_scaling<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, pts: &[ScalePoint], title: &str) -> Result<()> {
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(e)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let nmin = pts.iter().map(|p| p.nodes).min().unwrap_or(1) as f64;
    let nmax = pts.iter().map(|p| p.nodes).max().unwrap_or(1) as f64;
    let xr = (nmin / 1.5)..(nmax * 1.5);
    let time: Vec<(&str, Vec<(f64, f64)>)> = vec![
        ("100 %", pts.iter().map(|p| (p.nodes as f64, p.t100_ms)).collect()),
        ("99 %", pts.iter().map(|p| (p.nodes as f64, p.t99_ms)).collect()),
        ("50 %", pts.iter().map(|p| (p.nodes as f64, p.t50_ms)).collect()),
    ];
    panel(left, xr.clone(), "convergence of a new advert (ms)", &time)?;
    let bytes: Vec<(&str, Vec<(f64, f64)>)> =
        vec![("bytes sent per node", pts.iter().map(|p| (p.nodes as f64, p.bytes_per_node)).collect())];
    panel(right, xr, "bytes sent per node", &bytes)?;
    Ok(())
}

/// One log-x panel: the series as lines with points, and c·log N fitted to the first series, dashed.
fn panel<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    xr: Range<f64>,
    ydesc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let c = fit_log(&series[0].1);
    let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(c * xr.end.ln(), f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&area)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(xr.clone().log_scale(), 0f64..ymax.max(1.0))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("nodes (log scale)")
        .y_desc(ydesc)
        .x_label_formatter(&|x| format!("{}", *x as u64))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (k, (label, p)) in series.iter().enumerate() {
        let col = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(p.clone(), col.stroke_width(2)))
            .map_err(e)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(2)));
        chart.draw_series(p.iter().map(|&(x, y)| Circle::new((x, y), 4, col.filled()))).map_err(e)?;
    }
    let steps = 60;
    let (a, b) = (xr.start.ln(), xr.end.ln());
    let curve: Vec<(f64, f64)> = (0..=steps)
        .map(|k| {
            let x = (a + (b - a) * k as f64 / steps as f64).exp();
            (x, c * x.ln())
        })
        .collect();
    let grey = RGBColor(120, 120, 120);
    chart
        .draw_series(DashedLineSeries::new(curve, 6, 4, grey.stroke_width(2)))
        .map_err(e)?
        .label(format!("{c:.1}·ln N (fit to {})", series[0].0))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(e)?;
    area.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fit_recovers_c() {
        let pts: Vec<(f64, f64)> = [1e3, 1e4, 1e5].iter().map(|&n: &f64| (n, 3.0 * n.ln())).collect();
        assert!((fit_log(&pts) - 3.0).abs() < 1e-9);
    }
}
