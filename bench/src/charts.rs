//! Charts beside a report, drawn by the harness (plotters, PNG): throughput
//! per contender with its range over the rounds, latency CDFs, task pauses
//! over time, and progress (records restored) over time. Text is
//! drawn with the system's fonts (fontconfig: Debian's fonts-dejavu-core).

use std::path::Path;

use plotters::prelude::*;

/// One bar: a contender's median with the lowest and highest round.
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

const SIZE: (u32, u32) = (1000, 560);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn drawing_failed(what: &str, path: &Path, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!(
        "drawing {what} ({}): {e:?}; text needs a font fontconfig finds (Debian: fonts-dejavu-core)",
        path.display()
    )
}

/// Horizontal bars (one per contender) of `unit`, with whiskers from the
/// lowest to the highest round.
pub fn bars(path: &Path, title: &str, unit: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let fail = |e: DrawingAreaErrorKind<_>| drawing_failed("a bar chart", path, e);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let top = bars
        .iter()
        .map(|b| b.high.max(b.median))
        .fold(0.0, f64::max)
        * 1.1;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..top.max(1.0), 0.0..n as f64)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(WHITE)
        .x_desc(unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(fail)?;
    for (i, bar) in bars.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.1), (bar.median, y + 0.65)],
                color.mix(0.7).filled(),
            )))
            .map_err(fail)?;
        chart
            .draw_series(std::iter::once(ErrorBar::new_horizontal(
                y + 0.375,
                bar.low,
                bar.median,
                bar.high,
                BLACK.stroke_width(2),
                12,
            )))
            .map_err(fail)?;
        // The label inside the bar's lane, above the bar; the median after it.
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}: {:.0}", bar.label, bar.median),
                (top * 0.005, y + 0.97),
                ("sans-serif", 16),
            )))
            .map_err(fail)?;
    }
    root.present().map_err(fail)?;
    Ok(())
}

/// One latency distribution: sorted samples in ms.
pub struct Curve<'a> {
    pub label: String,
    pub sorted_ms: &'a [u64],
}

/// Cumulative distributions of latency (x: ms, log scale; y: fraction of
/// records seen by then).
pub fn cdfs(path: &Path, title: &str, curves: &[Curve<'_>]) -> anyhow::Result<()> {
    let fail = |e: DrawingAreaErrorKind<_>| drawing_failed("a latency chart", path, e);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let max = curves
        .iter()
        .filter_map(|c| c.sorted_ms.last())
        .copied()
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..max * 1.2).log_scale(), 0.0..1.0)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency, ms (log scale)")
        .y_desc("fraction of records")
        .draw()
        .map_err(fail)?;
    for (i, curve) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let n = curve.sorted_ms.len().max(1) as f64;
        // At most ~2,000 points: every k-th sample, and the last.
        let step = (curve.sorted_ms.len() / 2000).max(1);
        let points = curve
            .sorted_ms
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == curve.sorted_ms.len())
            .map(|(k, ms)| ((*ms as f64).max(1.0), (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(fail)?
            .label(curve.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

/// One contender's rows of a timeline: `rows` tasks, spans (task, start s,
/// end s) drawn as bars, and a mark (s) drawn as a line.
pub struct Lane {
    pub label: String,
    pub rows: usize,
    pub spans: Vec<(usize, f64, f64)>,
    pub mark: f64,
}

/// Spans over time (x: s), one row per task, the lanes stacked.
pub fn timeline(path: &Path, title: &str, lanes: &[Lane]) -> anyhow::Result<()> {
    let fail = |e: DrawingAreaErrorKind<_>| drawing_failed("a timeline", path, e);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let end = lanes
        .iter()
        .flat_map(|l| l.spans.iter().map(|s| s.2).chain(std::iter::once(l.mark)))
        .fold(1.0, f64::max)
        * 1.05;
    let rows: usize = lanes.iter().map(|l| l.rows + 1).sum();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..end, 0.0..rows.max(1) as f64)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("seconds after the scale command")
        .draw()
        .map_err(fail)?;
    let mut top = rows as f64;
    for (i, lane) in lanes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let row = |task: usize| top - 1.0 - task as f64;
        chart
            .draw_series(lane.spans.iter().map(|(task, a, b)| {
                Rectangle::new(
                    [(*a, row(*task) + 0.15), (*b, row(*task) + 0.85)],
                    color.filled(),
                )
            }))
            .map_err(fail)?
            .label(format!(
                "{}: {} tasks, settled {:.1} s",
                lane.label, lane.rows, lane.mark
            ))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let bottom = top - lane.rows as f64;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(lane.mark, bottom), (lane.mark, top)],
                BLACK.stroke_width(2),
            )))
            .map_err(fail)?;
        top = bottom - 1.0;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

/// One contender's progress: (s, amount) samples, and when it was done.
pub struct Progress {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub done: f64,
}

/// Progress over time (x: s after a start; y: `y_desc`), a line per
/// contender ending in a dot where it was done.
pub fn progress(path: &Path, title: &str, y_desc: &str, series: &[Progress]) -> anyhow::Result<()> {
    let fail = |e: DrawingAreaErrorKind<_>| drawing_failed("a progress chart", path, e);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let end = series.iter().map(|s| s.done).fold(1.0, f64::max) * 1.05;
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("seconds after the start")
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(fail)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let last = s.points.last().map_or(0.0, |p| p.1);
        // From the start, to the last sample, held until done.
        let line = std::iter::once((0.0, 0.0))
            .chain(s.points.iter().copied())
            .chain(std::iter::once((s.done, last)));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(fail)?
            .label(format!("{}: done at {:.2} s", s.label, s.done))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(std::iter::once(Circle::new(
                (s.done, last),
                5,
                color.filled(),
            )))
            .map_err(fail)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both charts render to PNG files (with text: a missing font fails here).
    #[test]
    fn charts_render_to_png() {
        let dir = std::env::temp_dir().join(format!("millrace-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bar = |label: &str, median| Bar {
            label: label.into(),
            median,
            low: median * 0.9,
            high: median * 1.1,
        };
        let throughput = dir.join("t.png");
        bars(
            &throughput,
            "throughput",
            "records/s",
            &[bar("a", 100.0), bar("b", 50.0)],
        )
        .unwrap();
        let samples: Vec<u64> = (1..1000).collect();
        let latency = dir.join("l.png");
        cdfs(
            &latency,
            "latency",
            &[Curve {
                label: "a".into(),
                sorted_ms: &samples,
            }],
        )
        .unwrap();
        let scale = dir.join("s.png");
        timeline(
            &scale,
            "pauses",
            &[Lane {
                label: "a".into(),
                rows: 4,
                spans: vec![(0, 0.5, 1.5), (3, 2.0, 2.4)],
                mark: 3.0,
            }],
        )
        .unwrap();
        let restore = dir.join("r.png");
        progress(
            &restore,
            "restore",
            "records restored",
            &[Progress {
                label: "a".into(),
                points: vec![(0.5, 10.0), (1.0, 800.0)],
                done: 1.4,
            }],
        )
        .unwrap();
        for png in [throughput, latency, scale, restore] {
            let bytes = std::fs::read(&png).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{}", png.display());
            assert!(
                bytes.len() > 5_000,
                "{} is {} bytes",
                png.display(),
                bytes.len()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
