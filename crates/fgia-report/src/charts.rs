//! SVG charts drawn with plotters.

use plotters::prelude::*;

use crate::ReportError;

fn draw_err<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError::Chart(format!("{e:?}"))
}

/// One series of `(x, y, error)` points; `error` is drawn as a vertical bar when non-zero.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64, f64)>,
    /// Colour index (0: paper, 1: ours, 2+: others).
    pub colour: usize,
    /// Dashed line (paper values).
    pub dashed: bool,
}

fn colour(i: usize) -> RGBColor {
    [
        RGBColor(90, 90, 90),
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
        RGBColor(188, 189, 34),
    ][i % 10]
}

/// The corner of the plot with the fewest points in its part (the right or left 45 %, the
/// lower or upper 45 %), for the legend; lower right on ties.
fn legend_corner(points: &[(f64, f64, f64)], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let (w, h) = ((x1 - x0) * 0.45, (y1 - y0) * 0.45);
    let corners = [
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerLeft, false, false),
        (SeriesLabelPosition::UpperLeft, false, true),
    ];
    let count = |right: bool, upper: bool| {
        points.iter().filter(|p| (if right { p.0 >= x1 - w } else { p.0 <= x0 + w }) && (if upper { p.1 >= y1 - h } else { p.1 <= y0 + h })).count()
    };
    corners.into_iter().min_by_key(|&(_, right, upper)| count(right, upper)).map_or(SeriesLabelPosition::LowerRight, |c| c.0)
}

/// A line chart with points and error bars, as SVG text.
/// With `x_ticks`, the x axis shows only those `(position, label)` pairs (positions should be
/// whole numbers, for example category indices).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], x_ticks: Option<&[(f64, String)]>) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let all: Vec<(f64, f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
        if all.is_empty() {
            return Err(ReportError::Chart(format!("chart '{title}' has no data")));
        }
        let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1 - p.2), b.max(p.1 + p.2)));
        let xpad = ((x1 - x0) * 0.08).max(0.5);
        (x0, x1) = (x0 - xpad, x1 + xpad);
        let ypad = ((y1 - y0) * 0.15).max(1.0);
        (y0, y1) = ((y0 - ypad).max(0.0), y1 + ypad);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        let ticks: Vec<(f64, String)> = x_ticks.map(<[(f64, String)]>::to_vec).unwrap_or_default();
        // With explicit ticks, only those positions get a label.
        let only_ticks = |v: &f64| ticks.iter().find(|t| (t.0 - v).abs() < 1e-6).map(|t| t.1.clone()).unwrap_or_default();
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label).y_desc(y_label).light_line_style(RGBColor(240, 240, 240)).max_light_lines(1);
        if !ticks.is_empty() {
            mesh.x_labels(((x1 - x0).ceil() as usize + 1).clamp(2, 50)).x_label_formatter(&only_ticks);
        }
        mesh.draw().map_err(draw_err)?;
        for s in series {
            let c = colour(s.colour);
            let style = ShapeStyle { color: c.to_rgba(), filled: false, stroke_width: 2 };
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                    .map_err(draw_err)?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(draw_err)?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
            chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled()))).map_err(draw_err)?;
            chart
                .draw_series(s.points.iter().filter(|p| p.2 > 0.0).map(|&(x, y, e)| ErrorBar::new_vertical(x, y - e, y, y + e, c.filled(), 8)))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(200, 200, 200))
            .position(legend_corner(&all, (x0, x1), (y0, y1)))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_both_series() {
        let svg = line_chart(
            "accuracy",
            "input size",
            "top-1 (%)",
            &[
                Series { label: "paper".into(), points: vec![(0.0, 81.6, 0.0), (1.0, 83.3, 0.0)], colour: 0, dashed: true },
                Series { label: "ours".into(), points: vec![(0.0, 60.0, 1.5), (1.0, 64.0, 0.0)], colour: 1, dashed: false },
            ],
            Some(&[(0.0, "224".to_string()), (1.0, "280".to_string())]),
        )
        .expect("draws");
        assert!(svg.starts_with("<svg") && svg.contains("paper") && svg.contains("ours"));
        assert!(svg.contains("\n224\n") && svg.contains("\n280\n"), "tick labels drawn");
        assert!(line_chart("empty", "x", "y", &[], None).is_err());
    }

    #[test]
    fn the_legend_goes_where_the_points_are_not() {
        let falling = [(0.0, 9.0, 0.0), (1.0, 5.0, 0.0), (2.0, 1.0, 0.0)];
        assert!(matches!(legend_corner(&falling, (0.0, 2.0), (0.0, 10.0)), SeriesLabelPosition::UpperRight));
        let rising = [(0.0, 1.0, 0.0), (1.0, 5.0, 0.0), (2.0, 9.0, 0.0)];
        assert!(matches!(legend_corner(&rising, (0.0, 2.0), (0.0, 10.0)), SeriesLabelPosition::LowerRight));
    }
}
