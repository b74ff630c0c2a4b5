"""A self-contained ``report.html``: a run at a glance, images embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.flag{background:#fff3cd;border:1px solid #e0b000;padding:0.6em}.ok{background:#e8f5e9;padding:0.6em}
img{max-width:100%}section{margin-bottom:2em}
"""


def image_tag(path) -> str:
    if path is None or not Path(path).is_file():
        return "<p>(not available)</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.4f}"
    return html.escape(str(v))


def html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def problems_section(problems: dict | None) -> str:
    """The data's problems, every file listed: skipped (unreadable), label noise, leakage."""
    if not problems or not any(problems.get(k) for k in ("skipped", "label_noise", "leakage")):
        return ""
    parts = []
    if problems.get("skipped"):
        rows = [[s["path"], s["label"], s["error"]] for s in problems["skipped"]]
        parts.append(f"<h3>{len(rows)} unreadable file(s), skipped</h3>" + html_table(["file", "label", "error"], rows))
    for key, title in (("label_noise", "identical photos under two labels (label noise)"),
                       ("leakage", "identical photos in two splits (leakage)")):
        if problems.get(key):
            rows = [[i["path"], i["label"], i["split"]] for group in problems[key] for i in group]
            parts.append(f'<h3 class="flag">{len(problems[key])} group(s) of {title}</h3>'
                         + html_table(["file", "label", "split"], rows))
    return "<section><h2>Data problems</h2>" + "".join(parts) + "</section>"


def unknown_section(unknown: dict | None, paths: dict) -> str:
    """Calibration (temperature, NLL and ECE before/after, reliability diagram) and how well
    the stored threshold separates unknown items, per out-of-distribution set."""
    if not unknown:
        return ""
    calib = html_table(["", "before", "after"], [
        ["negative log-likelihood", unknown["val_nll_before"], unknown["val_nll_after"]],
        ["expected calibration error", unknown["val_ece_before"], unknown["val_ece_after"]]])
    ood = unknown.get("ood") or {}
    rows = [[name, v["images"], v["auroc"], f"{v['flagged']:.1%}"] for name, v in ood.items() if isinstance(v, dict)]
    flagged = ood.get("in_distribution_flagged")
    ood_table = html_table(["out-of-distribution set", "images", "AUROC", "flagged unknown"], rows) if rows else ""
    fitted_on = unknown.get("fitted_on", "the validation split")
    held_out = fitted_on == "the validation split"  # else the answers it was fitted on are all there is
    return (f"<section><h2>Calibration and unknown items</h2><p>Temperature {unknown['temperature']:.3f} "
            f"fitted on {html.escape(fitted_on)}. An item is <b>unknown</b> when its score "
            f"({html.escape(unknown['score'])}) is below {unknown['threshold']:.3f}, which keeps "
            f"{unknown['keep']:.0%} of them"
            + (f"; {flagged:.1%} of test images are flagged" if flagged is not None and held_out else "")
            + f".</p>{calib}{ood_table}"
            f"{image_tag(paths.get('reliability_png'))}</section>")


def attribute_sections(summary: dict, figures: dict[str, dict]) -> str:
    """One section per attribute of a model of several (``AttributeResults.summary``): its
    score, per-value precision, recall and F1 (and average precision and threshold for a
    multi-label one), its confusion matrix and most confident mistakes (``figures``: PNG paths)."""
    parts = []
    for name, a in summary.items():
        multi = a["kind"] == "multi-label"
        score = f"mAP {_fmt(a['mAP'])}" if multi else f"accuracy {_fmt(a['accuracy'])}"
        if multi:
            values = html_table(["value", "precision", "recall", "F1", "average precision", "threshold", "support"],
                           [[v, m["precision"], m["recall"], m["f1"], m["average_precision"] if m["average_precision"]
                             is not None else float("nan"), m["threshold"], m["support"]]
                            for v, m in a["per_value"].items()])
        else:
            values = html_table(["value", "precision", "recall", "F1", "support"],
                           [[v, m["precision"], m["recall"], m["f1"], m["support"]] for v, m in a["per_class"].items()])
        pictures = "".join(image_tag(path) for path in figures.get(name, {}).values())
        parts.append(f"<section><h2>Attribute {html.escape(name)}{' (several values per photo)' if multi else ''}</h2>"
                     f"<p>{html.escape(a['split'])}: {score} on {a['samples']} photos labelled for it "
                     f"({a['unlabelled']} not labelled).</p>{values}{pictures}</section>")
    return "\n".join(parts)


@dataclass
class ReportParts:
    """What a report shows beyond one split's result: the training ``history`` (curves), the
    data's ``problems``, the calibration and ``unknown`` figures (``evaluation.ood``), and more
    HTML ``sections`` (a model of several attributes: ``attribute_sections``)."""

    history: list[dict] | None = None
    problems: dict | None = None
    unknown: dict | None = None
    sections: str = ""
    # Grad-CAM overlays of the most confident mistakes, in ``result.mistakes()``' order
    # (``fashionclf.models.explain``): where the model looked when it was wrong.
    heatmaps: object = None


def write_report(result, accuracies: dict, overfit: dict, info: dict, paths: dict,
                 parts: ReportParts = ReportParts()) -> None:
    history, problems, unknown, sections = parts.history, parts.problems, parts.unknown, parts.sections
    acc_table = html_table(["split", "accuracy"], [[k, v] for k, v in accuracies.items()])
    if overfit.get("flag"):
        check = f'<p class="flag"><b>Large train/held-out gap.</b> {html.escape(overfit["hint"])}</p>'
    elif overfit.get("gap") is not None:
        check = f'<p class="ok">Train accuracy is {overfit["gap"]:.1%} above the worst held-out split: no sign of strong overfitting.</p>'
    else:
        check = ""
    per_class = html_table(
        ["class", "precision", "recall", "F1", "support"],
        [[name, m["precision"], m["recall"], m["f1"], m["support"]] for name, m in result.per_class.items()],
    )
    settings = html_table(["setting", "value"], [[k, v] for k, v in info.items()])
    heatmap_note = ("<p>Where the model looked (Grad-CAM): the brighter a region, the more it raised the score of "
                    "the class the model wrongly chose.</p>")
    curves = ""
    if history:
        curves = f"<section><h2>Training curves</h2>{image_tag(paths.get('curves_png'))}</section>"
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fashionclf report: {html.escape(str(info.get('model', '')))}</title>
<style>{STYLE}</style></head><body>
<h1>fashionclf report: {html.escape(str(info.get('model', '')))}</h1>
<section><h2>Accuracy: train vs val vs test</h2>{acc_table}{check}
<p>{html.escape(result.split)} loss {_fmt(result.loss)}, {len(result.y_true)} images.
Train accuracy is measured in eval mode on the training split.</p></section>
{curves}
<section><h2>Confusion matrix ({html.escape(result.split)})</h2>{image_tag(paths.get('confusion_matrix_png'))}</section>
<section><h2>Per-class metrics ({html.escape(result.split)})</h2>{per_class}</section>
<section><h2>Most confident mistakes</h2>{image_tag(paths.get('mistakes_png'))}
{heatmap_note if paths.get('mistakes_heatmaps_png') else ''}{image_tag(paths.get('mistakes_heatmaps_png'))}</section>
{sections}
{unknown_section(unknown, paths)}
{problems_section(problems)}
<section><h2>Settings</h2>{settings}</section>
</body></html>
"""
    Path(paths["report_html"]).write_text(doc, encoding="utf-8")
