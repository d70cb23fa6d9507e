//! A picture of a chaos run (`hanat-lab chaos … --plot FILE.svg`): the
//! share of each AZ's private host's requests answered, per half second,
//! on a timeline from the fault, with the lab's events (injection, status
//! verdicts, route changes, replacement) marked. Drawn with `plotters` as
//! SVG.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::chaos::Report;

/// Width of a bucket: requests are counted per half second.
const BUCKET: f64 = 0.5;

/// The share of requests answered (%), per [`BUCKET`] from `from` (seconds)
/// to `to`; buckets without a request are left out, and so is a last one
/// the measurement cut short (it would look like a drop).
fn answered(timeline: &[(f64, bool)], from: f64, to: f64) -> Vec<(f64, f64)> {
    let n = ((to - from) / BUCKET).floor().max(1.0) as usize;
    let mut counts = vec![(0u32, 0u32); n];
    for (t, ok) in timeline {
        let i = ((t - from) / BUCKET) as usize;
        if *t >= from && i < n {
            counts[i].0 += 1;
            counts[i].1 += u32::from(*ok);
        }
    }
    counts
        .iter()
        .enumerate()
        .filter(|(_, (sent, _))| *sent > 0)
        .map(|(i, (sent, ok))| {
            (
                from + i as f64 * BUCKET,
                100.0 * f64::from(*ok) / f64::from(*sent),
            )
        })
        .collect()
}

/// Draw `r` to `path` (SVG).
pub fn plot(r: &Report, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let times = r.timelines.iter().flatten().map(|(t, _)| *t);
    let from = times.clone().fold(0.0, f64::min);
    let to = times.fold(1.0, f64::max);
    let series: Vec<Vec<(f64, f64)>> = r.timelines.iter().map(|t| answered(t, from, to)).collect();
    // Room above 100% for the events' labels.
    let top = 160.0;
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "{}: outage {:.1} s, {} of {} requests lost, {} route change(s), {}",
        r.name,
        r.outage_ms as f64 / 1000.0,
        r.lost,
        r.sent,
        r.route_changes,
        if r.recovered {
            "recovered"
        } else {
            "NOT recovered"
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(from..to, 0.0..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds from the fault")
        .y_desc("requests answered, %")
        .y_labels(9)
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLUE, RED, GREEN];
    for (i, points) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("AZ {i}'s private host"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    // The fault at 0, then the lab's events, labels staggered in height.
    let mut marks = vec![(0.0, "fault injected".to_owned())];
    marks.extend(r.event_times.iter().cloned());
    for (k, (t, what)) in marks.iter().enumerate() {
        let grey = BLACK.mix(0.35);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*t, 0.0), (*t, top)],
                grey.stroke_width(1),
            )))
            .map_err(|e| err(&e))?;
        let label: String = what.chars().take(60).collect();
        let y = top * (0.97 - 0.06 * (k % 5) as f64);
        // Labels of late events end at their line, so they stay inside.
        let side = match *t > from + 0.6 * (to - from) {
            true => HPos::Right,
            false => HPos::Left,
        };
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(side, VPos::Top));
        chart
            .draw_series(std::iter::once(Text::new(label, (*t, y), style)))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_answered_is_counted_per_half_second() {
        // 20 requests a second, none answered from 1 s to 2 s, and half of
        // them from 2 s on.
        let t: Vec<(f64, bool)> = (0..60)
            .map(|i| {
                let at = f64::from(i) / 20.0 - 0.5;
                (at, !(1.0..2.0).contains(&at) && (at < 2.0 || i % 2 == 0))
            })
            .collect();
        let r = answered(&t, -0.5, 2.5);
        assert_eq!(r.len(), 6);
        assert_eq!(r[0], (-0.5, 100.0));
        assert_eq!(r[3].1, 0.0);
        assert_eq!(r[4].1, 0.0);
        assert_eq!(r[5], (2.0, 50.0));
        // A last bucket the measurement cut short is left out, and so are
        // buckets without a request.
        assert_eq!(answered(&t, -0.5, 2.3).len(), 5);
        assert_eq!(answered(&t, -2.5, 2.5).len(), 6);
    }

    #[test]
    fn a_run_is_drawn_with_its_figures_hosts_and_events() {
        let timeline: Vec<(f64, bool)> = (0..200)
            .map(|i| {
                let at = f64::from(i) / 20.0 - 2.0;
                (at, !(0.0..1.5).contains(&at))
            })
            .collect();
        let r = Report {
            name: "terminate-instance".into(),
            stopped_by: None,
            azs: 2,
            recovered: true,
            outage_ms: 1500,
            measured_ms: 8000,
            ended_in_outage: false,
            lost: 30,
            sent: 400,
            recovery_ms: 1500,
            source_ip_changes: 2,
            route_changes: 1,
            sources: Vec::new(),
            api_calls_per_nat_min: 0.0,
            calls: Vec::new(),
            injected: std::time::Instant::now(),
            logs: Vec::new(),
            events: Vec::new(),
            event_times: vec![(1.4, "az0: route → eni-1 active".into())],
            timelines: vec![
                timeline.clone(),
                timeline.iter().map(|(t, _)| (*t, true)).collect(),
            ],
            sessions: Default::default(),
        };
        let path = std::env::temp_dir().join(format!("hanat-plot-{}.svg", std::process::id()));
        plot(&r, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        for text in [
            "terminate-instance: outage 1.5 s, 30 of 400 requests lost, 1 route change(s), recovered",
            "fault injected",
            "az0: route → eni-1 active",
            "AZ 0&apos;s private host",
            "AZ 1&apos;s private host",
        ] {
            assert!(
                svg.contains(text) || svg.contains(&text.replace("&apos;", "'")),
                "{text}"
            );
        }
        // The two hosts' lines, in their colours.
        for colour in ["#0000FF", "#FF0000"] {
            assert!(
                svg.lines()
                    .any(|l| l.starts_with("<polyline") && l.contains(colour)),
                "{colour}"
            );
        }
    }
}
