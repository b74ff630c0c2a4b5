"""For shops that outgrow the review page: a queue exported as Label Studio tasks (with the
model's predictions and the queue's scores) and Label Studio's JSON-MIN export read back into
a decisions manifest.

Tasks (``export_tasks``): ``{"data": {"image", "fashionclf_path"}, "predictions": [{"model_version",
"score", "result": [{"from_name": ATTRIBUTE, "to_name": "image", "type": "choices",
"value": {"choices": [...]}}]}]}``, one per card in the queue's order; ``image`` is
``/data/local-files/?d=<path below --document-root>`` (Label Studio's local-files storage,
its ``LOCAL_FILES_DOCUMENT_ROOT``), ``fashionclf_path`` the photo's path, which the JSON-MIN
export carries back. ``labeling_config`` is the matching labelling interface (one
``Choices`` per attribute), written beside the tasks.

JSON-MIN (``import_min``): a list of objects, one per annotated task, with the task's data
fields and one field per attribute (a string, or ``{"choices": [...]}`` for several).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

from fashionclf.data.attributes import Schema
from fashionclf.errors import DataError
from fashionclf.fileio import write_bytes_atomic
from fashionclf.review.decisions import Decisions
from fashionclf.review.queue import Queue

LOCAL_FILES = "/data/local-files/?d="


def task_image(photo: Path, root: Path) -> str:
    try:
        relative = photo.resolve().relative_to(root.resolve())
    except ValueError:
        raise DataError(f"{photo} is not below --document-root {root}: Label Studio serves local files from "
                        "one root; pass a folder that holds every photo of the queue") from None
    return LOCAL_FILES + quote(relative.as_posix())


def export_tasks(queue: Queue, path: str | os.PathLike, root: str | os.PathLike, model_version: str) -> Path:
    """Write the tasks JSON (``path``) and the labelling interface (``path`` with ``.xml``)."""
    path, root = Path(path), Path(root)
    tasks = []
    for card in queue.cards:
        result = [{"from_name": a.name, "to_name": "image", "type": "choices",
                   "value": {"choices": [v for v in card.suggested.get(a.name, "").split(";") if v]}}
                  for a in queue.schema.attributes if card.suggested.get(a.name)]
        score = None if card.score == float("inf") else round(card.score, 6)
        tasks.append({"data": {"image": task_image(card.path, root), "fashionclf_path": str(card.path.resolve())},
                      "predictions": [{"model_version": model_version, "score": score, "result": result}]
                      if result else []})
    write_bytes_atomic(path, (json.dumps(tasks, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    write_bytes_atomic(path.with_suffix(".xml"), labeling_config(queue.schema).encode("utf-8"))
    return path


def labeling_config(schema: Schema) -> str:
    """Label Studio's labelling interface for ``schema``: the image, one ``Choices`` per attribute."""
    parts = ['<View>', '  <Image name="image" value="$image"/>']
    for a in schema.attributes:
        parts.append(f'  <Header value={quoteattr(a.name)}/>')
        choice = "multiple" if a.multi else "single"
        parts.append(f'  <Choices name={quoteattr(a.name)} toName="image" choice="{choice}" showInline="true">')
        parts += [f"    <Choice value={quoteattr(v)}/>" for v in a.values]
        parts.append("  </Choices>")
    return "\n".join([*parts, "</View>", ""])


def import_min(path: str | os.PathLike, decisions: Decisions, schema: Schema, root: str | os.PathLike) -> dict:
    """Every annotated task of a JSON-MIN export as decisions (one undo step each); values
    that are not the attribute's are refused with the task named. Returns counts."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"--import-label-studio {path}: cannot read it as JSON ({exc}); export the project from "
                        "Label Studio as JSON-MIN") from None
    if not isinstance(rows, list):
        raise DataError(f"--import-label-studio {path}: expected a list of tasks (Label Studio's JSON-MIN export)")
    counts = {"tasks": len(rows), "decided": 0, "skipped": 0}
    for n, row in enumerate(rows, start=1):
        photo = photo_of(row, Path(root))
        values = {a.name: choices_of(row.get(a.name)) for a in schema.attributes}
        if photo is None or not any(values.values()):
            counts["skipped"] += 1  # not a task of ours, or not annotated
            continue
        for a in schema.attributes:
            given = values[a.name]
            if not given:
                continue
            bad = [v for v in given if v not in a.values]
            if bad or (len(given) > 1 and not a.multi):
                raise DataError(f"--import-label-studio {path}, task {n} ({photo}): {a.name} {given} is not one of "
                                f"{', '.join(a.values)}")
            decisions.decide([photo], a.name, ";".join(v for v in a.values if v in given), write=False)
        counts["decided"] += 1
    decisions.write()
    return counts


def photo_of(row: dict, root: Path) -> Path | None:
    if row.get("fashionclf_path"):
        return Path(row["fashionclf_path"])
    image = str(row.get("image", ""))
    return root / unquote(image[len(LOCAL_FILES):]) if image.startswith(LOCAL_FILES) else None


def choices_of(cell) -> list[str]:
    if isinstance(cell, dict):
        return [str(v) for v in cell.get("choices", [])]
    if isinstance(cell, list):
        return [str(v) for v in cell]
    return [str(cell)] if cell not in (None, "") else []
