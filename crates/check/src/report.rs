//! `kiln check --report`: one self-contained HTML page per check, for a person deciding with their eyes.
//!
//! The page holds the verdict, the thresholds, agreement, a histogram of |delta confidence| (inline SVG),
//! a per-class agreement table and, for the worst [`REPORT_WORST_IMAGES`] flipped or drifted images, a
//! thumbnail of the file beside each model's input pixels (after resize and crop, as the graph got
//! them) and both answers. Everything is inline (CSS, SVG, JPEG `data:` URIs), so the file works as a
//! CI artifact with no network; the rest of the images are counted, not drawn, so thousands of images
//! still make a page of a few hundred kilobytes. Every string that comes from a model or a file name
//! goes through [`escape_html`]: labels are arbitrary UTF-8 from checkpoints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use artifact::{ChannelOrder, PreprocessSpec, ResampleFilter, ResizeMode, ResizeSize};
use base64::Engine as _;
use runtime::{ImageLimits, Model, PreparedImage};

use crate::baseline::BaselineReport;
use crate::golden::{DEFAULT_TOLERANCE, GoldenFile, GoldenReport, Verdict};
use crate::observe::{Observation, Outcome};

/// Images shown with thumbnails, worst first; the others are counted. 50 rows of three small JPEGs
/// keep a page under about a megabyte however many images were checked.
pub const REPORT_WORST_IMAGES: usize = 50;

/// Longest side of a file's thumbnail, in pixels.
const THUMBNAIL_EDGE: u32 = 96;

/// JPEG quality of embedded images: small files, artefacts below what a 96-px view shows.
const JPEG_QUALITY: u8 = 85;

/// Escapes `text` for HTML element content and double- or single-quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The models whose input pixels a report shows; `None` where there is no model (a golden file's
/// recorded answers).
#[derive(Clone, Copy, Default)]
pub struct ReportModels<'a> {
    /// The baseline (or, for a golden check, nothing).
    pub old: Option<&'a Model>,
    /// The artifact under check.
    pub new: Option<&'a Model>,
}

/// The HTML page of a baseline comparison; `old` and `new` are the observations `report` was computed
/// from (the same images in the same order).
pub fn baseline_html(
    report: &BaselineReport,
    old: &[Observation],
    new: &[Observation],
    models: ReportModels<'_>,
) -> String {
    let t = &report.thresholds;
    let limit = |value: Option<f32>| value.map_or_else(|| "no limit".to_string(), |v| v.to_string());
    let page = Page {
        title: format!("kiln check: {} against baseline {}", report.new.display(), report.old.display()),
        verdict: report.verdict,
        old_name: "baseline",
        new_name: "new",
        facts: vec![
            ("baseline", report.old.display().to_string()),
            ("new", report.new.display().to_string()),
            ("images", report.images.to_string()),
            ("top-1 agreement", format!("{:.4} (--min-agreement {})", report.agreement, t.min_agreement)),
            ("flips", report.flips.len().to_string()),
            ("same-label images", report.same_label.to_string()),
            (
                "max |delta confidence|",
                delta_fact(
                    report.max_delta,
                    report.same_label,
                    format!("--max-delta {}", limit(t.max_delta)),
                ),
            ),
            (
                "mean |delta confidence|",
                delta_fact(
                    report.mean_delta,
                    report.same_label,
                    format!("--max-mean-delta {}", limit(t.max_mean_delta)),
                ),
            ),
        ],
        violations: report.violations.clone(),
        pairs: old
            .iter()
            .zip(new)
            .map(|(o, n)| Pair { image: &o.image, old: &o.outcome, new: &n.outcome })
            .collect(),
        drift_limit: t.max_delta.unwrap_or(DEFAULT_TOLERANCE),
        models,
    };
    page.render()
}

/// A max or mean |delta confidence| with its threshold: a number only when some image kept its label,
/// since with none the report's 0 would read as a perfect match.
fn delta_fact(value: f32, same_label: usize, threshold: String) -> String {
    if same_label == 0 {
        format!("n/a: no image keeps its label ({threshold})")
    } else {
        format!("{value:.2e} ({threshold})")
    }
}

/// The HTML page of a golden check: the recorded answers against the answers now
/// ([`GoldenReport::answers`]); only `model`'s input pixels are shown, the recorded side has no model.
pub fn golden_html(report: &GoldenReport, golden: &GoldenFile, model: &Model) -> String {
    let paths: Vec<_> =
        report.answers.iter().map(|(index, _)| golden.image_path(&golden.entries[*index])).collect();
    let pairs = report
        .answers
        .iter()
        .zip(&paths)
        .map(|((index, actual), path)| Pair {
            image: path,
            old: &golden.entries[*index].expected,
            new: actual,
        })
        .collect::<Vec<Pair>>();
    let same_label = pairs.iter().filter(|p| p.delta().is_some()).count();
    let mut violations: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    violations.truncate(REPORT_WORST_IMAGES);
    let page = Page {
        title: format!("kiln check: {} against a golden file", report.artifact.display()),
        verdict: report.verdict,
        old_name: "golden",
        new_name: "now",
        facts: vec![
            ("artifact", report.artifact.display().to_string()),
            ("images", report.images.to_string()),
            ("compared", report.compared.to_string()),
            ("findings", report.findings.len().to_string()),
            (
                "max |delta confidence|",
                delta_fact(report.max_delta, same_label, format!("--tolerance {}", report.tolerance)),
            ),
        ],
        violations,
        pairs,
        drift_limit: report.tolerance,
        models: ReportModels { old: None, new: Some(model) },
    };
    page.render()
}

/// One image's two answers.
struct Pair<'a> {
    image: &'a Path,
    old: &'a Outcome,
    new: &'a Outcome,
}

impl Pair<'_> {
    /// |delta confidence| when both give the same class; `None` for flips and double refusals.
    fn delta(&self) -> Option<f32> {
        match (self.old, self.new) {
            (Outcome::Class(a), Outcome::Class(b)) if self.old.same_answer(self.new) => {
                Some((a.confidence - b.confidence).abs())
            }
            _ => None,
        }
    }

    /// How bad the difference is, for ordering: any flip (worst when a version was sure) above any
    /// drift; NaN above every finite drift.
    fn severity(&self) -> f32 {
        if !self.old.same_answer(self.new) {
            2.0 + confidence(self.old).max(confidence(self.new))
        } else {
            self.delta().map_or(0.0, |d| if d.is_nan() { 1.5 } else { d })
        }
    }
}

fn confidence(outcome: &Outcome) -> f32 {
    match outcome {
        Outcome::Class(c) if !c.confidence.is_nan() => c.confidence,
        _ => 0.0,
    }
}

struct Page<'a> {
    title: String,
    verdict: Verdict,
    old_name: &'static str,
    new_name: &'static str,
    facts: Vec<(&'static str, String)>,
    violations: Vec<String>,
    pairs: Vec<Pair<'a>>,
    /// |delta confidence| above which a same-label image counts as drifted.
    drift_limit: f32,
    models: ReportModels<'a>,
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.pass{background:#d8f5d8}.fail{background:#fbd9d9}.verdict{display:inline-block;padding:4px 12px;\
font-weight:bold;font-size:18px}.card{display:inline-block;vertical-align:top;border:1px solid #ccc;\
margin:4px;padding:6px;width:330px}.card img{width:96px;height:96px;object-fit:contain;background:#eee;\
margin-right:4px}.card img.input{image-rendering:pixelated}.path{font-family:monospace;font-size:12px;\
word-break:break-all}.none{display:inline-block;width:96px;height:96px;font-size:11px;background:#eee;\
margin-right:4px;overflow:hidden;vertical-align:top}";

impl Page<'_> {
    fn render(&self) -> String {
        let mut html = String::new();
        let title = escape_html(&self.title);
        let (class, verdict) = match self.verdict {
            Verdict::Pass => ("pass", "PASS"),
            Verdict::Regression => ("fail", "FAIL: regression"),
            Verdict::InputProblem => ("fail", "ERROR: inputs missing or changed"),
        };
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n<p class=\"verdict {class}\">{verdict}</p>\n"
        );
        html.push_str("<h2>Measures and thresholds</h2>\n<table>\n");
        for (name, value) in &self.facts {
            let _ = writeln!(html, "<tr><th>{name}</th><td>{}</td></tr>", escape_html(value));
        }
        html.push_str("</table>\n");
        if !self.violations.is_empty() {
            html.push_str("<ul class=\"violations\">\n");
            for violation in &self.violations {
                let _ = writeln!(html, "<li><pre>{}</pre></li>", escape_html(violation));
            }
            html.push_str("</ul>\n");
        }
        self.histogram(&mut html);
        self.class_table(&mut html);
        self.worst_images(&mut html);
        html.push_str("</body></html>\n");
        html
    }

    /// |delta confidence| over same-label images in decades: the tolerance that matters (1e-6 noise,
    /// 1e-3 parity bound, 1e-1 a different model) is a power of ten.
    fn histogram(&self, html: &mut String) {
        const EDGES: [f32; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, f32::INFINITY];
        const NAMES: [&str; 8] = [
            "<1e-6",
            "1e-6..1e-5",
            "1e-5..1e-4",
            "1e-4..1e-3",
            "1e-3..1e-2",
            "1e-2..0.1",
            "\u{2265}0.1",
            "NaN",
        ];
        let mut counts = [0usize; 8];
        for delta in self.pairs.iter().filter_map(Pair::delta) {
            let bin =
                if delta.is_nan() { 7 } else { EDGES.iter().position(|&edge| delta < edge).unwrap_or(6) };
            counts[bin] += 1;
        }
        let total: usize = counts.iter().sum();
        let tallest = counts.iter().copied().max().unwrap_or(0).max(1);
        let _ = writeln!(
            html,
            "<h2>|delta confidence| over the {total} images both answer with the same label</h2>"
        );
        if total == 0 {
            html.push_str(
                "<p>No image got the same label from both, so there is no confidence to compare.</p>\n",
            );
            return;
        }
        let (bar, gap, height) = (70usize, 10usize, 120usize);
        let width = NAMES.len() * (bar + gap);
        let _ = write!(
            html,
            "<svg class=\"histogram\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" \
             role=\"img\" aria-label=\"histogram of confidence deltas\">",
            height + 40
        );
        for (index, (count, name)) in counts.iter().zip(NAMES).enumerate() {
            let x = index * (bar + gap);
            let h = count * height / tallest;
            let y = height + 15 - h;
            let _ = write!(
                html,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"#4a7bd0\"><title>{name}: {count}</title></rect>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{count}</text>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{name}</text>",
                x + bar / 2,
                y.saturating_sub(3).max(11),
                x + bar / 2,
                height + 32
            );
        }
        html.push_str("</svg>\n");
    }

    /// Agreement per class of the old answer: where a release regressed, and what it answers instead.
    fn class_table(&self, html: &mut String) {
        struct Row {
            images: usize,
            agree: usize,
            instead: BTreeMap<String, usize>,
        }
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        for pair in &self.pairs {
            let row = rows.entry(answer_name(pair.old)).or_insert_with(|| Row {
                images: 0,
                agree: 0,
                instead: BTreeMap::new(),
            });
            row.images += 1;
            if pair.old.same_answer(pair.new) {
                row.agree += 1;
            } else {
                *row.instead.entry(answer_name(pair.new)).or_default() += 1;
            }
        }
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_by(|(a, x), (b, y)| (x.agree * y.images).cmp(&(y.agree * x.images)).then(a.cmp(b)));
        let (old, new) = (self.old_name, self.new_name);
        let _ = writeln!(
            html,
            "<h2>Agreement per class ({old} answer)</h2>\n<table class=\"classes\"><tr><th>{old} answer</th>\
             <th>images</th><th>same in {new}</th><th>agreement</th><th>most often instead</th></tr>"
        );
        for (name, row) in rows {
            let instead = row
                .instead
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(answer, count)| format!("{} ({count})", escape_html(answer)))
                .unwrap_or_default();
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{instead}</td></tr>",
                escape_html(&name),
                row.images,
                row.agree,
                row.agree as f64 / row.images as f64
            );
        }
        html.push_str("</table>\n");
    }

    /// The worst flipped or drifted images with thumbnails; the rest counted.
    fn worst_images(&self, html: &mut String) {
        let mut flagged: Vec<&Pair> = self
            .pairs
            .iter()
            .filter(|p| {
                // NaN deltas count as drifted.
                !p.old.same_answer(p.new)
                    || p.delta().is_some_and(|d| {
                        d.partial_cmp(&self.drift_limit) != Some(std::cmp::Ordering::Less)
                            && d != self.drift_limit
                    })
            })
            .collect();
        flagged.sort_by(|a, b| b.severity().total_cmp(&a.severity()));
        let flips = flagged.iter().filter(|p| !p.old.same_answer(p.new)).count();
        let drifts = flagged.len() - flips;
        let shown = flagged.len().min(REPORT_WORST_IMAGES);
        let _ = writeln!(
            html,
            "<h2>Flipped and drifted images</h2>\n<p class=\"counts\">{flips} flipped, {drifts} drifted \
             (same label, |delta confidence| above {:e}); the worst {shown} shown, {} more not shown.</p>",
            self.drift_limit,
            flagged.len() - shown
        );
        let thumbnail_spec = thumbnail_spec();
        for pair in &flagged[..shown] {
            let bytes = fs::read(pair.image);
            let file = match &bytes {
                Ok(bytes) => runtime::prepare(bytes, &thumbnail_spec, &ImageLimits::default())
                    .map_err(|e| e.to_string())
                    .and_then(|image| jpeg_data_uri(&image, ChannelOrder::Rgb)),
                Err(e) => Err(e.to_string()),
            };
            let input = |model: Option<&Model>| {
                let (model, bytes) = (model?, bytes.as_ref().ok()?);
                Some(
                    model
                        .prepare(bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|image| jpeg_data_uri(&image, model.manifest().preprocess.channel_order)),
                )
            };
            let image = escape_html(&pair.image.display().to_string());
            let _ = write!(html, "<div class=\"card\"><div class=\"path\">{image}</div><div>");
            image_tag(html, "thumbnail", "file", Some(file));
            image_tag(html, "input", &format!("{} input", self.old_name), input(self.models.old));
            image_tag(html, "input", &format!("{} input", self.new_name), input(self.models.new));
            let delta = pair
                .delta()
                .map(|d| format!("<tr><th>|delta|</th><td>{d:.2e}</td></tr>"))
                .unwrap_or_default();
            let _ = writeln!(
                html,
                "</div><table><tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{}</td></tr>{delta}</table></div>",
                self.old_name,
                escape_html(&pair.old.to_string()),
                self.new_name,
                escape_html(&pair.new.to_string())
            );
        }
    }
}

/// `label` for a class, `(refused)` for an error: the table groups answers, not messages.
fn answer_name(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Class(c) => c.label.clone(),
        Outcome::Error { .. } => "(refused)".into(),
    }
}

/// An `<img>` with `title` as tooltip, a note where the image cannot be shown, nothing without a model.
fn image_tag(html: &mut String, class: &str, title: &str, image: Option<Result<String, String>>) {
    match image {
        Some(Ok(uri)) => {
            let _ = write!(html, "<img class=\"{class}\" src=\"{uri}\" title=\"{title}\" alt=\"{title}\">");
        }
        Some(Err(reason)) => {
            let _ = write!(html, "<span class=\"none\">{title}: {}</span>", escape_html(&reason));
        }
        None => {}
    }
}

/// The runtime's own decoding (every format and EXIF orientation it accepts), resized to fit
/// [`THUMBNAIL_EDGE`] keeping the aspect.
fn thumbnail_spec() -> PreprocessSpec {
    let mut spec = PreprocessSpec::legacy(
        ResizeMode::Pil,
        ResampleFilter::Bilinear,
        THUMBNAIL_EDGE,
        THUMBNAIL_EDGE,
        1.0,
        [0.0; 3],
        [1.0; 3],
    );
    spec.exif_orientation = true;
    spec.size =
        ResizeSize::ShortestEdge { shortest_edge: THUMBNAIL_EDGE, longest_edge: Some(THUMBNAIL_EDGE) };
    spec
}

/// `image` as a JPEG `data:` URI, channels put back in RGB order for display.
fn jpeg_data_uri(image: &PreparedImage, order: ChannelOrder) -> Result<String, String> {
    let mut pixels = image.pixels().to_vec();
    if order == ChannelOrder::Bgr {
        pixels.chunks_exact_mut(3).for_each(|pixel| pixel.swap(0, 2));
    }
    let mut jpeg = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY);
    image::ImageEncoder::write_image(
        encoder,
        &pixels,
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("cannot encode JPEG: {e}"))?;
    Ok(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::baseline::{Thresholds, compare_observations};
    use crate::observe::Classification;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn class(label: &str, class_index: usize, confidence: f32) -> Outcome {
        Outcome::Class(Classification { label: label.into(), class_index, confidence })
    }

    fn seen(image: PathBuf, outcome: Outcome) -> Observation {
        Observation { image, sha256: String::new(), outcome }
    }

    #[test]
    fn escaping_leaves_text_as_text() {
        assert_eq!(
            escape_html(r#"<script>alert("x")</script> & 'q'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"
        );
        assert_eq!(escape_html("שלום 猫 🐱 plain"), "שלום 猫 🐱 plain");
        assert_eq!(escape_html("&amp;"), "&amp;amp;", "already-escaped text is escaped again, not trusted");
    }

    #[test]
    fn a_baseline_report_shows_verdict_histogram_classes_and_flipped_thumbnails() -> TestResult {
        let dir = tempfile::tempdir()?;
        let png = dir.path().join("red.png");
        image::RgbImage::from_pixel(120, 60, image::Rgb([200, 30, 30])).save(&png)?;
        let text = dir.path().join("notes.txt");
        fs::write(&text, "not an image")?;
        let old = vec![
            seen(png.clone(), class("red <b>", 0, 0.9)),
            seen(dir.path().join("same.png"), class("blue", 1, 0.8)),
            seen(text.clone(), Outcome::Error { error: "unknown format".into() }),
        ];
        let new = vec![
            seen(png.clone(), class("<script>alert(1)</script>", 2, 0.7)),
            seen(dir.path().join("same.png"), class("blue", 1, 0.75)),
            seen(text, Outcome::Error { error: "unknown format".into() }),
        ];
        let report = compare_observations(Path::new("1"), Path::new("2"), &old, &new, &Thresholds::default());
        let html = baseline_html(&report, &old, &new, ReportModels::default());

        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(html.contains("<p class=\"verdict fail\">FAIL: regression</p>"), "{html}");
        assert!(html.contains("0.6667 (--min-agreement 1)"), "agreement and threshold: {html}");
        assert!(html.contains("<svg class=\"histogram\""), "{html}");
        // The one same-label image moved by 0.05: the 1e-2..0.1 bar counts it.
        assert!(html.contains("<title>1e-2..0.1: 1</title>"), "{html}");
        assert!(html.contains("<td>red &lt;b&gt;</td><td>1</td><td>0</td><td>0.0000</td>"), "{html}");
        assert!(html.contains("<td>(refused)</td><td>1</td><td>1</td>"), "{html}");
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("1 flipped, 1 drifted"), "0.05 is beyond the default tolerance: {html}");
        let card = html.find(&escape_html(&png.display().to_string())).ok_or("the flip has no card")?;
        assert!(html[card..].contains("<img class=\"thumbnail\" src=\"data:image/jpeg;base64,"), "{html}");
        assert_eq!(html.matches("http").count(), 1, "nothing but the SVG namespace may name a URL");
        Ok(())
    }

    #[test]
    fn only_the_worst_images_get_thumbnails() {
        let old: Vec<_> = (0..REPORT_WORST_IMAGES + 7)
            .map(|i| seen(format!("{i}.jpg").into(), class("a", 0, 0.5)))
            .collect();
        let new: Vec<_> = old.iter().map(|o| seen(o.image.clone(), class("b", 1, 0.5))).collect();
        let report = compare_observations(Path::new("1"), Path::new("2"), &old, &new, &Thresholds::default());
        let html = baseline_html(&report, &old, &new, ReportModels::default());
        assert_eq!(html.matches("<div class=\"card\">").count(), REPORT_WORST_IMAGES);
        assert!(html.contains(&format!("the worst {REPORT_WORST_IMAGES} shown, 7 more not shown")), "{html}");
        assert!(!html.contains("<svg") && html.contains("no confidence to compare"), "all flipped: {html}");
        assert!(html.contains("n/a: no image keeps its label (--max-delta no limit)"), "{html}");
        assert!(!html.contains("0.00e0"), "no delta may read as a perfect match: {html}");
    }
}
