//! `report.html`: one self-contained page (inline SVG, no scripts, no network) with the summary
//! table, the run's provenance and plots: what each attack achieved against each defence, the
//! extraction curves over queries, accuracy per access level, and latency overhead. It is what a
//! reader opens first, and what nightly CI uploads.

use std::collections::BTreeMap;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::records::{ANY_DEFENCE, NO_ATTACK, Record};
use super::report::{group, mean_ci, table_rows};

const W: u32 = 760;
const H: u32 = 380;

/// Renders the report. `provenance` is the run's `run.json` (pretty-printed), shown folded.
pub fn render(
    records: &[Record],
    title: &str,
    provenance: Option<&str>,
    errors: &[&Record],
) -> String {
    let mut page = String::new();
    page.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>{CSS}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(title)
    ));
    page.push_str(
        "<p>Owner accuracy is top-1 on the test split (for a denoiser: the mean per-image PSNR \
         of its output on the noisy test images, in dB, then that of the noisy input); p50 is \
         batch-1 latency in ms (in brackets: the median ratio to the unprotected victim, both \
         timed in the same interleaved rounds). For each attack: the attacker's test accuracy, fidelity (top-1 \
         agreement with the owner's model) and theft gain (accuracy minus the no-theft reference \
         trained on the attacker's data alone). Means over seeds, ±95% interval when there are \
         several. Every number comes from the records of this run (<code>records.jsonl</code>).</p>\n",
    );
    let (header, rows) = table_rows(records);
    page.push_str("<table><thead><tr>");
    for h in &header {
        page.push_str(&format!("<th>{}</th>", esc(h)));
    }
    page.push_str("</tr></thead><tbody>\n");
    for r in &rows {
        page.push_str("<tr>");
        for c in r {
            page.push_str(&format!("<td>{}</td>", esc(c)));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody></table>\n");

    for (dataset, model) in victims(records) {
        page.push_str(&format!("<h2>{} / {}</h2>\n", esc(&dataset), esc(&model)));
        let of_victim: Vec<Record> = records
            .iter()
            .filter(|r| r.dataset == dataset && r.model == model)
            .cloned()
            .collect();
        for (caption, svg) in [
            (
                "Attacker accuracy per attack and defence; dashed: the no-theft reference, dotted: the unprotected owner",
                attack_bars(&of_victim),
            ),
            (
                "Extraction: attacker accuracy against queries used",
                extraction_curves(&of_victim),
            ),
            (
                "Owner accuracy per access level",
                level_curves(&of_victim, LevelMeasure::Accuracy),
            ),
            (
                "Denoiser PSNR per access level (dB); dashed: the noisy input",
                level_curves(&of_victim, LevelMeasure::Psnr),
            ),
            (
                "Batch-1 latency p50 / p99 of the owner's deployment (ms)",
                latency_bars(&of_victim),
            ),
        ] {
            match svg {
                Some(Ok(svg)) => page.push_str(&format!(
                    "<figure>{svg}<figcaption>{}</figcaption></figure>\n",
                    esc(caption)
                )),
                Some(Err(e)) => {
                    page.push_str(&format!("<p class=\"err\">plot failed: {}</p>\n", esc(&e)))
                }
                None => {}
            }
        }
    }
    if !errors.is_empty() {
        page.push_str("<h2>Failed cells</h2>\n<ul>\n");
        for e in errors {
            page.push_str(&format!(
                "<li>{}/{}/{}/{}/seed {}: {}</li>\n",
                esc(&e.dataset),
                esc(&e.model),
                esc(&e.defence),
                esc(&e.attack),
                e.seed,
                esc(&e.error)
            ));
        }
        page.push_str("</ul>\n");
    }
    if let Some(p) = provenance {
        page.push_str(&format!(
            "<details><summary>Provenance (run.json)</summary><pre>{}</pre></details>\n",
            esc(p)
        ));
    }
    page.push_str("</body></html>\n");
    page
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}\
th{background:#f3f3f3}figure{margin:1.5em 0}figcaption{font-size:13px;color:#444}.err{color:#a00}\
pre{font-size:12px;background:#f7f7f7;padding:1em;overflow:auto}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn victims(records: &[Record]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for r in records {
        let k = (r.dataset.clone(), r.model.clone());
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// Mean of a metric for (defence, attack), over seeds.
fn mean_of(records: &[Record], defence: &str, attack: &str, metric: &str) -> Option<f64> {
    let v: Vec<f64> = records
        .iter()
        .filter(|r| {
            r.status == "ok" && r.defence == defence && r.attack == attack && r.metric == metric
        })
        .map(|r| r.value)
        .collect();
    (!v.is_empty()).then(|| mean_ci(&v).0)
}

fn ordered(records: &[Record], pick: impl Fn(&Record) -> Option<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        if let Some(k) = pick(r)
            && !out.contains(&k)
        {
            out.push(k);
        }
    }
    out
}

type Plot = Option<Result<String, String>>;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The label of a category axis (categories sit at x = i + 0.5): the name at each centre only.
fn category_label(names: &[String], x: f64) -> String {
    let i = x.floor() as usize;
    if (x - i as f64 - 0.5).abs() < 1e-6 {
        names.get(i).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// The same legend box on every plot.
fn draw_legend<'a>(chart: &mut Chart<'a, 'a>) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw(f: impl FnOnce(&mut String) -> Result<(), Box<dyn std::error::Error>>) -> Plot {
    let mut svg = String::new();
    Some(f(&mut svg).map(|()| svg).map_err(|e| e.to_string()))
}

fn attack_bars(records: &[Record]) -> Plot {
    let defences = ordered(records, |r| {
        (r.defence != ANY_DEFENCE && r.metric == "attacker-accuracy").then(|| r.defence.clone())
    });
    let attacks = ordered(records, |r| {
        (r.defence != ANY_DEFENCE && r.metric == "attacker-accuracy").then(|| r.attack.clone())
    });
    if defences.is_empty() || attacks.is_empty() {
        return None;
    }
    let scratch: Vec<f64> = ordered(records, |r| {
        (r.defence == ANY_DEFENCE && r.metric == "attacker-accuracy").then(|| r.attack.clone())
    })
    .iter()
    .filter_map(|a| mean_of(records, ANY_DEFENCE, a, "attacker-accuracy"))
    .collect();
    let owner = mean_of(records, "none", NO_ATTACK, "owner-accuracy");
    draw(|svg| {
        let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = attacks.len();
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..1f64)?;
        let names = attacks.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| category_label(&names, *x))
            .y_desc("test accuracy")
            .draw()?;
        let width = 0.8 / defences.len() as f64;
        for (di, d) in defences.iter().enumerate() {
            let color = Palette99::pick(di).to_rgba();
            let bars: Vec<Rectangle<(f64, f64)>> = attacks
                .iter()
                .enumerate()
                .filter_map(|(ai, a)| {
                    let v = mean_of(records, d, a, "attacker-accuracy")?;
                    let x0 = ai as f64 + 0.1 + di as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, v)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(d.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        for (value, style, label) in scratch
            .iter()
            .map(|v| (*v, BLACK.stroke_width(2), "no-theft reference"))
            .chain(owner.map(|v| (v, BLUE.stroke_width(1), "owner (none)")))
        {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, value), (n as f64, value)],
                    if label == "owner (none)" { 2 } else { 8 },
                    4,
                    style,
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], style));
        }
        draw_legend(&mut chart)?;
        root.present()?;
        Ok(())
    })
}

fn extraction_curves(records: &[Record]) -> Plot {
    // Points (queries used, attacker accuracy) per defence, one per attack entry that queried.
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let g = group(records);
    for ((_, _, defence, attack, metric), v) in &g {
        if metric != "queries-used" || mean_ci(v).0 <= 0.0 {
            continue;
        }
        if let Some(acc) = mean_of(records, defence, attack, "attacker-accuracy") {
            series
                .entry(defence.clone())
                .or_default()
                .push((mean_ci(v).0, acc));
        }
    }
    if series.is_empty() {
        return None;
    }
    let max_q = series
        .values()
        .flatten()
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    draw(|svg| {
        let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_q * 1.05, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("queries used (images)")
            .y_desc("attacker test accuracy")
            .draw()?;
        for (i, (d, mut pts)) in series.into_iter().enumerate() {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(d)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], color));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        draw_legend(&mut chart)?;
        root.present()?;
        Ok(())
    })
}

/// What a level plot shows: accuracy (classifiers, on [0,1]) or PSNR (denoisers, in dB, on an
/// axis fitted to the values: a [0,1] axis would hide them).
#[derive(Clone, Copy, PartialEq)]
enum LevelMeasure {
    Accuracy,
    Psnr,
}

impl LevelMeasure {
    fn level_prefix(self) -> &'static str {
        match self {
            LevelMeasure::Accuracy => "level-accuracy:",
            LevelMeasure::Psnr => "level-psnr:",
        }
    }
    fn owner_metric(self) -> &'static str {
        match self {
            LevelMeasure::Accuracy => "owner-accuracy",
            LevelMeasure::Psnr => "owner-psnr",
        }
    }
    fn y_desc(self) -> &'static str {
        match self {
            LevelMeasure::Accuracy => "owner test accuracy",
            LevelMeasure::Psnr => "PSNR (dB)",
        }
    }
}

fn level_curves(records: &[Record], measure: LevelMeasure) -> Plot {
    let mut series: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for ((_, _, defence, attack, metric), v) in &group(records) {
        if attack != NO_ATTACK {
            continue;
        }
        if let Some(level) = metric.strip_prefix(measure.level_prefix()) {
            series
                .entry(defence.clone())
                .or_default()
                .push((level.to_string(), mean_ci(v).0));
        }
    }
    if series.is_empty() {
        return None;
    }
    // Full access (the owner) closes each curve.
    for (d, pts) in series.iter_mut() {
        if let Some(acc) = mean_of(records, d, NO_ATTACK, measure.owner_metric()) {
            pts.push(("full".into(), acc));
        }
    }
    let n = series.values().map(Vec::len).max().unwrap_or(1).max(2);
    // The noisy input's PSNR: what a denoiser must beat to be of any use.
    let reference = match measure {
        LevelMeasure::Psnr => mean_of(records, "none", NO_ATTACK, "noisy-psnr").or_else(|| {
            records
                .iter()
                .find(|r| r.status == "ok" && r.metric == "noisy-psnr")
                .map(|r| r.value)
        }),
        LevelMeasure::Accuracy => None,
    };
    let (y0, y1) = match measure {
        LevelMeasure::Accuracy => (0.0, 1.0),
        LevelMeasure::Psnr => {
            let values = series
                .values()
                .flatten()
                .map(|p| p.1)
                .chain(reference)
                .filter(|v| v.is_finite());
            let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            if lo.is_finite() && hi.is_finite() {
                let pad = ((hi - lo) * 0.1).max(0.5);
                ((lo - pad).max(0.0).floor(), (hi + pad).ceil())
            } else {
                (0.0, 50.0)
            }
        }
    };
    draw(|svg| {
        let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.2f64..(n - 1) as f64 + 0.2, y0..y1)?;
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .x_desc("access level (last point: full access)")
            .y_desc(measure.y_desc())
            .draw()?;
        if let Some(value) = reference {
            let style = BLACK.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(-0.2, value), ((n - 1) as f64 + 0.2, value)],
                    8,
                    4,
                    style,
                ))?
                .label("noisy input")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], style));
        }
        for (i, (d, pts)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let xy: Vec<(f64, f64)> = pts
                .iter()
                .enumerate()
                .map(|(x, (_, y))| (x as f64, *y))
                .collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
                .label(d)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], color));
            chart.draw_series(xy.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        draw_legend(&mut chart)?;
        root.present()?;
        Ok(())
    })
}

fn latency_bars(records: &[Record]) -> Plot {
    let defences = ordered(records, |r| {
        (r.attack == NO_ATTACK && r.metric == "latency-ms-p50").then(|| r.defence.clone())
    });
    if defences.is_empty() {
        return None;
    }
    let values: Vec<(f64, f64)> = defences
        .iter()
        .map(|d| {
            (
                mean_of(records, d, NO_ATTACK, "latency-ms-p50").unwrap_or(0.0),
                mean_of(records, d, NO_ATTACK, "latency-ms-p99").unwrap_or(0.0),
            )
        })
        .collect();
    let top = values.iter().map(|v| v.1.max(v.0)).fold(0.0, f64::max) * 1.15 + 1e-3;
    let n = defences.len();
    draw(|svg| {
        let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
        let names = defences.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| category_label(&names, *x))
            .y_desc("ms")
            .draw()?;
        for (k, (label, color)) in [("p50", BLUE.mix(0.7)), ("p99", RED.mix(0.5))]
            .into_iter()
            .enumerate()
        {
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    let y = if k == 0 { v.0 } else { v.1 };
                    let x0 = i as f64 + 0.15 + k as f64 * 0.35;
                    Rectangle::new([(x0, 0.0), (x0 + 0.3, y)], color.filled())
                }))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        draw_legend(&mut chart)?;
        root.present()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(defence: &str, attack: &str, metric: &str, value: f64) -> Record {
        Record {
            run: "r".into(),
            dataset: "cifar10".into(),
            model: "resnet20".into(),
            defence: defence.into(),
            attack: attack.into(),
            seed: 0,
            metric: metric.into(),
            value,
            higher_is_better: false,
            status: "ok".into(),
            error: String::new(),
            wall_seconds: 1.0,
            config_hash: "h".into(),
            git: "g".into(),
            cell_rows: 0,
            timing: None,
        }
    }

    #[test]
    fn the_page_has_the_table_and_one_svg_per_plot_with_data() {
        let records = vec![
            rec("none", "-", "owner-accuracy", 0.8),
            rec("none", "-", "latency-ms-p50", 1.5),
            rec("none", "-", "latency-ms-p99", 2.5),
            rec("none", "extraction", "attacker-accuracy", 0.6),
            rec("none", "extraction", "queries-used", 1000.0),
            rec("none", "fine-tune", "attacker-accuracy", 0.7),
            rec("*", "scratch", "attacker-accuracy", 0.4),
            rec("locked", "-", "owner-accuracy", 0.79),
            rec("locked", "-", "level-accuracy:level-0", 0.1),
            rec("locked", "-", "level-accuracy:level-1", 0.5),
            rec("locked", "-", "latency-ms-p50", 1.7),
            rec("locked", "-", "latency-ms-p99", 3.0),
            rec("locked", "extraction", "attacker-accuracy", 0.5),
            rec("locked", "extraction", "queries-used", 1000.0),
        ];
        let html = render(&records, "run <x>", Some("{\"git\": \"abc\"}"), &[]);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("run &lt;x&gt;"), "titles are escaped");
        assert_eq!(
            html.matches("<svg").count(),
            4,
            "bars, extraction, levels, latency"
        );
        assert!(html.contains("fine-tune"));
        assert!(html.contains("0.8000"), "the summary table is on the page");
        assert!(html.contains("Provenance"));
        // Without levels or queries, those plots are left out rather than drawn empty.
        let plain: Vec<Record> = records
            .iter()
            .filter(|r| !r.metric.starts_with("level-") && r.metric != "queries-used")
            .cloned()
            .collect();
        assert_eq!(render(&plain, "t", None, &[]).matches("<svg").count(), 2);
    }

    #[test]
    fn denoiser_levels_get_their_own_psnr_chart() {
        let mut records = vec![
            rec("none", "-", "owner-psnr", 26.3),
            rec("none", "-", "noisy-psnr", 14.2),
            rec("none", "-", "latency-ms-p50", 9.0),
            rec("none", "-", "latency-ms-p99", 9.5),
            rec("se", "-", "owner-psnr", 26.3),
            rec("se", "-", "noisy-psnr", 14.2),
            rec("se", "-", "level-psnr:level-0", 7.9),
            rec("se", "-", "level-psnr:level-1", 12.5),
        ];
        for r in &mut records {
            r.model = "dncnn".into();
        }
        let html = render(&records, "t", None, &[]);
        assert_eq!(html.matches("<svg").count(), 2, "PSNR levels and latency");
        assert!(html.contains("Denoiser PSNR per access level"));
        assert!(!html.contains("Owner accuracy per access level"));
        assert!(html.contains("PSNR (dB)"));
        assert!(html.contains("psnr 26.30 dB (14.20 dB)"), "owner column");
        assert!(
            html.contains("level-0 7.90 dB, level-1 12.50 dB"),
            "levels column"
        );
    }
}
