//! Charts as inline SVG, drawn by plotters' SVG backend (no fonts are loaded: the browser
//! renders the text).

use plotters::prelude::*;
pub use plotters::style::RGBColor;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<u64>,
    pub color: RGBColor,
}

pub const BLUE_: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREEN_: RGBColor = RGBColor(44, 160, 44);
pub const RED_: RGBColor = RGBColor(214, 39, 40);
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);

const WIDTH: u32 = 920;
const HEIGHT: u32 = 280;

/// A line chart of `series` over the buckets named by `labels`, as an SVG document.
pub fn lines(caption: &str, labels: &[String], series: &[Series]) -> String {
    let mut svg = String::new();
    // Drawing into a String cannot fail; an error would only lose the chart, never the page
    // (its table still shows every figure).
    let _ = draw(&mut svg, caption, labels, series);
    svg
}

fn draw(
    svg: &mut String,
    caption: &str,
    labels: &[String],
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = labels.len().max(1);
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let top = top + top / 10 + 1;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .margin_right(48)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0..n.saturating_sub(1).max(1), 0..top)?;
    let label = |i: &usize| labels.get(*i).cloned().unwrap_or_default();
    chart
        .configure_mesh()
        .x_labels(n.min(8))
        .x_label_formatter(&label)
        .y_labels(6)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.values.iter().enumerate().map(|(i, v)| (i, *v)),
                color.stroke_width(2),
            ))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
