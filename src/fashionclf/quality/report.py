"""What an audit writes: the CSV of suspects (``write_suspects``) and report.html
(``write_report``: the estimated share of wrong labels per class, and a grid of the top
suspects with their given and suggested labels)."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import numpy as np

from fashionclf.evaluation.plots import plot_suspects, save
from fashionclf.evaluation.report import STYLE, html_table, image_tag
from fashionclf.fileio import csv_cell, write_bytes_atomic
from fashionclf.inference.predict import display_path
from fashionclf.quality.result import AuditResult, Suspect

GRID = 32  # suspects drawn in report.html


def write_suspects(suspects: list[Suspect], path: Path, multi: bool = False) -> Path:
    """``path,label,suggested,score,kind[,attribute],other``: every field quoted, formula-like
    cells defused (as predict's CSV); written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["path", "label", "suggested", "score", "kind", *(["attribute"] if multi else []), "other"])
    for s in suspects:
        writer.writerow([csv_cell(display_path(s.path)), csv_cell(s.label), csv_cell(s.suggested), f"{s.score:.6f}",
                         s.kind, *([csv_cell(s.attribute)] if multi else []), csv_cell(display_path(s.other))])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))
    return path


def write_report(result: AuditResult, out: Path) -> Path:
    """``out/report.html``: per class its photos, estimated share of wrong labels and flagged
    photos; counts of each kind; the top label suspects drawn (``out/suspects.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    index = {name: i for i, name in enumerate(result.pool.names)}
    top = [s for s in result.suspects if s.kind == "label"][:GRID]
    images = result.pool.images[[index[s.path] for s in top]] if top else result.pool.images[:0]
    captions = [f"{s.attribute + ': ' if s.attribute else ''}given {s.label}\nsuggested {s.suggested}\n{s.score:.3f}"
                for s in top]
    grid = out / "suspects.png"
    save(plot_suspects(np.asarray(images), captions, "Most suspect labels").figure, grid)
    kinds = {k: sum(s.kind == k for s in result.suspects) for k in ("label", "duplicate", "outlier")}
    noise = html_table(["attribute", "class", "photos", "estimated wrong labels", "flagged"],
                       [[a, c, n, f"{share:.1%}", f] for a, c, n, share, f in result.noise_table()])
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fashionclf audit</title><style>{STYLE}</style></head><body>
<h1>fashionclf audit: {html.escape(result.pool.source)}</h1>
<p>{len(result.pool.names):,} photos judged by models that did not learn from them ({len(result.issues)} attribute(s),
confident learning); flagged: {kinds['label']} label(s), {result.duplicate_pairs} near-duplicate pair(s),
{kinds['outlier']} outlier(s). {result.seconds:.0f} s.</p>
<section><h2>Estimated share of wrong labels per class</h2>{noise}</section>
<section><h2>Most suspect labels</h2>{image_tag(grid)}</section>
</body></html>
"""
    path = out / "report.html"
    write_bytes_atomic(path, doc.encode("utf-8"))
    return path
