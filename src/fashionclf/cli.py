"""The ``fashionclf`` command: parse, call one library function, print.

Exit status: 0 success; 1 some inputs failed (predict) or the export's parity check failed;
2 usage or data error, with one line on stderr and no traceback.

Building the parser imports no torch (``fashionclf --help`` and ``--version`` are instant);
each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fashionclf._version import __version__
from fashionclf.errors import FashionclfError
from fashionclf.service.settings import ServeSettings
from fashionclf.training.config import (
    BACKENDS,
    GRAPHS,
    PREDICT_BATCH_SIZE,
    SPLITS,
    TTA_CHOICES,
    TrainConfig,
    add_flags,
    config_from_args,
    over_saved,
)
from fashionclf.training.recipes import RECIPES

DATA_FLAGS = ["data", "verify", "test_fraction"]


def positive_int(text: str) -> int:
    """argparse type for counts: a usage error (exit 2, one line) for 0, negatives or non-numbers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def seconds(text: str) -> float:
    """argparse type for time limits: a usage error for 0, negatives, NaN or non-numbers."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def cmd_data(args) -> int:
    from fashionclf.data.sources import PHOTO_VERIFICATION, describe

    info = describe(args.data, args.classes, args.verify, config_from_args(args).split, args.grid,
                    log=print)
    check = info["verification"]
    print(f"data: {info['source']} ({check if check == PHOTO_VERIFICATION else 'SHA-256 ' + check})")
    for table in info.get("attributes") or [{"name": "class", "values": info["classes"], "counts": info["counts"]}]:
        print_count_table(table)
    if "grid" in info:
        print(f"sample grid: {info['grid']}")
    from fashionclf.training.config import SMALL_SET, TrainConfig
    from fashionclf.training.crossfit import resolve

    if resolve(TrainConfig(data=args.data, classes=args.classes), plain=True).calibration == "crossfit":
        print(f"note: under {SMALL_SET} photos without splits of their own, train learns from every photo and "
              "calibrates on cross-fitted answers (no val or test split); --calibration split carves them as shown")
    return 0


def print_count_table(table: dict) -> None:
    """One attribute's values with their photo counts per split (``describe``'s tables)."""
    splits = ("train", "val", "test")
    title = table["name"] + (" (several values per photo)" if table.get("multi") else "")
    if "unlabelled" in table:
        print(f"\nattribute {title}")
    width = max(len(c) for c in [*table["values"], "(unlabelled)", table["name"]])
    print(f"{table['name']:<{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for i, name in enumerate(table["values"]):
        print(f"{name:<{width}}  " + " ".join(f"{table['counts'][s][i]:>6}" for s in splits))
    if "unlabelled" in table:
        print(f"{'(unlabelled)':<{width}}  " + " ".join(f"{table['unlabelled'][s]:>6}" for s in splits))
    else:
        print(f"{'total':<{width}}  " + " ".join(f"{sum(table['counts'][s]):>6}" for s in splits))
    for problem in table.get("problems", []):
        print(f"problem: {problem}")


def cmd_models(args) -> int:
    from fashionclf.models import count_parameters, create_model, get_model_entry, list_models

    for name in list_models():
        entry = get_model_entry(name)
        params = count_parameters(create_model(name, num_classes=args.num_classes))
        size = f"{entry.input_size}x{entry.input_size}x{entry.contract.channels}"
        print(f"{name:<16} {params:>10,} params  {size:>9} input  {entry.description}")
    return 0


def cmd_recipes(args) -> int:
    from fashionclf.training.recipes import RECIPES, SUMMARIES

    for name, table in RECIPES.items():
        print(f"{name}: {SUMMARIES.get(name, '')}")
        print("  " + "  ".join(f"--{k.replace('_', '-')} {v}" for k, v in table.items()))
    return 0


def cmd_train(args) -> int:
    from fashionclf.training.fit import fit
    from fashionclf.training.rundir import check_new

    config = config_from_args(args)
    if args.config:  # a saved config (config.json, tune's best.json); flags typed beside it win
        config = over_saved(args.config, config, typed_flags(args.argv, "train"))
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: launch it for this machine
        from fashionclf.training.ddp import launch

        if not args.resume:  # refused here in one line, before torchrun starts (rank 0 checks again and locks)
            check_new(config.out, args.exist_ok)
        return launch(args.nproc, args.argv)
    metrics = fit(config, resume=args.resume, exist_ok=args.exist_ok)
    where = f"({args.resume or config.out}/metrics.json)"
    if "crossfit" in metrics:  # no test split: the fold models' estimate
        print(f"out_of_sample_accuracy {metrics['crossfit']['accuracy']:.4f}  {where}")
    elif "test_accuracy" in metrics:  # under torchrun, rank 0's
        print(f"test_accuracy {metrics['test_accuracy']:.4f}  {where}")
    return 0


def typed_flags(argv: list[str], command: str) -> set[str]:
    """The settings typed on the command line of ``command``, whatever their value: ``argv``
    parsed again with every default of that command suppressed (a flag given at its default
    value, ``--seed 0``, is still typed)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "func"}


def cmd_evaluate(args) -> int:
    from fashionclf.training.results import evaluate_checkpoint

    s = evaluate_checkpoint(args.checkpoint, args.split, args.out, args.data, args.verify, args.device, args.tta,
                            score_train=args.with_train).summary
    acc = "  ".join(f"{k} {v:.4f}" for k, v in s["accuracies"].items())
    print(f"{s['model']} on {s['split']} ({s['samples']:,} images): accuracy {s['accuracy']:.4f}, loss {s['loss']:.4f}")
    if s.get("left_out"):
        n = s["left_out"]
        print(f"left out: {n['trained_on']:,} photos the model trained on and {n['validated_on']:,} it validated on "
              "(same SHA-256); every other photo scored" if n["trained_on"] or n["validated_on"] else
              "every photo scored: none is one the model trained or validated on")
    print(f"accuracy side by side: {acc}")
    if s["overfitting"]["flag"]:
        print(f"warning: {s['overfitting']['hint']}")
    print(f"report: {s['files']['report_html']}")
    return 0


def cmd_predict(args) -> int:
    from fashionclf.inference.predict import TagSettings, tag_files, tag_to_file

    settings = TagSettings(args.format, args.top_k, args.batch_size, args.min_confidence, args.backend, args.device,
                           review=args.review, review_attribute=args.review_attribute, dask=args.dask,
                           explain=args.explain, graph=args.graph)
    if args.output:
        counts = tag_to_file(args.output, args.checkpoint, args.inputs, settings)
    else:
        counts = tag_files(args.checkpoint, args.inputs, sys.stdout, settings)
    if counts["low_confidence"]:
        print(f"{counts['low_confidence']} of {counts['rows']} rows below --min-confidence "
              f"{args.min_confidence} (low_confidence=true)", file=sys.stderr)
    if counts["unknown"]:
        print(f"{counts['unknown']} of {counts['rows']} rows are of none of the model's classes (unknown=true)",
              file=sys.stderr)
    if args.review:
        print(f"{counts['review']} photos to review in {args.review}/<label>/ (listed in {args.review}/review.csv); "
              f"move misplaced ones, then: fashionclf train --data YOUR_DATA --data {args.review}", file=sys.stderr)
    if args.explain:
        print(f"{counts['explained']} heatmaps of where the model looked in {args.explain}/ (listed in "
              f"{args.explain}/explained.csv)", file=sys.stderr)
    if counts["failed"]:
        print(f"{counts['failed']} of {counts['rows']} inputs failed (see the error column)", file=sys.stderr)
    return 1 if counts["failed"] else 0


def cmd_tune(args) -> int:
    from pathlib import Path

    from fashionclf.scale.tune import TuneSettings, load_space, run_worker, summarise, tune
    from fashionclf.training.config import parse_duration

    if args.evaluate_best:  # no trial: the summary, on the machine that holds the winner's folder
        Path(args.out).mkdir(parents=True, exist_ok=True)
        summarise(args.study, args.storage, Path(args.out))
        return 0
    settings = TuneSettings(args.recipe, args.model, load_space(args.recipe, args.space), args.study, args.storage,
                            args.n_trials, parse_duration(args.timeout, "--timeout"), args.jobs, Path(args.out))
    base = config_from_args(args)
    if args.worker:  # trials only, as a worker of a study driven from elsewhere
        run_worker(settings, dataclasses.replace(base, recipe=args.recipe, model=args.model))
    else:
        tune(settings, base)
    return 0


def cmd_export(args) -> int:
    from fashionclf.inference.classifier import check_parity
    from fashionclf.inference.export import export_onnx

    if args.int8:
        from fashionclf.inference.classifier import INT8_PAYS
        from fashionclf.inference.quantize import export_int8

        r = export_int8(args.checkpoint, args.output, args.data, args.calibration_images, args.verify)
        print(f"wrote {r['output']} ({r['bytes'] / 1e6:.2f} MB against {r['fp32_bytes'] / 1e6:.2f} MB in fp32; "
              f"calibrated on {r['calibration_images']} training images in {r['quantize_seconds']:.1f} s)")
        print(f"test accuracy on {r['images']} images: fp32 {r['fp32_accuracy']:.4f}, int8 {r['int8_accuracy']:.4f} "
              f"({r['change_points']:+.2f} pt, same top class for {r['agreement']:.2%})")
        print(f"images/s at batch 256: fp32 {r['fp32_images_per_second']:,.0f}, int8 {r['int8_images_per_second']:,.0f} "
              f"({r['speedup']:.2f}x); at batch 1: fp32 {r['fp32_images_per_second_single']:,.0f}, int8 "
              f"{r['int8_images_per_second_single']:,.0f} ({r['speedup_single']:.2f}x)")
        print("int8 is faster here: serve or predict it with --graph int8 (or --graph fastest)" if r["pays"] else
              f"int8 is not {INT8_PAYS}x as fast here at both batch sizes: {r['why_not']}; --graph fastest keeps fp32")
        return 0

    r = export_onnx(args.checkpoint, args.output)
    print(f"wrote {r['output']} ({r['bytes'] / 1e6:.2f} MB, opset {r['opset']}, {r['export_seconds']:.1f} s)")
    p = check_parity(r["checkpoint"], r["onnx"], args.check_images, args.data)
    print(f"parity on {p['checked_on']}: max |p_onnx - p_torch| = {p['max_abs_diff']:.2e} "
          f"(tolerance {p['tolerance']:.0e}), same top class for {p['argmax_agreement']:.2%}: {p['parity']}")
    return 0 if p["parity"] == "ok" else 1


def cmd_serve(args) -> int:
    from fashionclf.service.serve import serve
    from fashionclf.service.settings import read_api_key

    serve(ServeSettings(args.checkpoint, args.host, args.port, args.backend, args.workers, args.access_log,
                        args.limit_concurrency, args.timeout_keep_alive, args.header_timeout, args.docs,
                        read_api_key(args.api_key_file), args.insecure, args.graph))
    return 0


def cmd_audit(args) -> int:
    from fashionclf.quality.find import AuditSettings, audit

    result = audit(config_from_args(args), AuditSettings(args.output, args.audit_out, args.folds, args.rank))
    for attribute, value, photos, share, flagged in result.noise_table():
        print(f"{attribute + ': ' if result.pool.schema is not None else ''}{value:<20} {photos:>7,} photos  "
              f"about {share:5.1%} wrong labels  {flagged:>5} flagged")
    kinds = {k: sum(s.kind == k for s in result.suspects) for k in ("label", "duplicate", "outlier")}
    print(f"{kinds['label']} labels to check, {result.duplicate_pairs} near-duplicate pairs, {kinds['outlier']} "
          f"outliers: {result.files['csv']} (most suspect first); report: {result.files['report_html']}")
    return 0


def cmd_review(args) -> int:
    from fashionclf.review.app import ReviewSettings, review
    from fashionclf.service.settings import read_api_key

    review(ReviewSettings(args.queue, args.model, args.decisions, args.host, args.port,
                          read_api_key(args.api_key_file), args.insecure, args.export_label_studio,
                          args.import_label_studio, args.document_root))
    return 0


GRAPH_HELP = ("a model.pt's ONNX graph: fp32 (default), int8 (the model.int8.onnx that 'export --int8' wrote beside it) "
              "or fastest (whichever of the two is faster on this CPU, timed at start)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashionclf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fashionclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="find and verify the data, show class counts, save a sample grid")
    add_flags(p, ["classes", "val_fraction", "seed", *DATA_FLAGS])
    p.add_argument("--grid", metavar="FILE.png", help="save a labelled grid of sample images")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list the named training recipes and their settings")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model and write a run directory. A setting left out takes the "
                                   "recipe's value, else the model's default, else the default shown; "
                                   "DIR/config.json records every value used.")
    add_flags(p)
    p.add_argument("--config", metavar="FILE", help="start from a saved config: a run's config.json or tune's "
                                                   "best.json (flags given beside it override it)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last.pt")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into --out even when it already holds a run (config.json or model.pt), replacing "
                        "its files; without it such a folder is refused")
    p.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="train with N data-parallel processes on this machine (torchrun; --batch-size is the "
                        "global batch); across machines run torchrun -m fashionclf train yourself")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("audit", help="find wrong labels, near-duplicates and outliers (K-fold, confident learning)",
                       description="Judge every labelled photo with a model that did not learn from it (K-fold "
                                   "training runs), then flag the labels confident learning doubts, near-duplicate "
                                   "photos and outliers. Training flags set the folds' runs (default: recipe shop "
                                   "with --init, else fast).")
    add_flags(p, [f.name for f in dataclasses.fields(TrainConfig) if f.name != "out"])
    p.add_argument("--output", required=True, metavar="FILE.csv",
                   help="the suspects, most suspect first: path,label,suggested,score,kind,other (never overwritten)")
    p.add_argument("--out", dest="audit_out", default="runs/audit", metavar="DIR",
                   help="the fold runs and report.html (default: runs/audit)")
    p.add_argument("--folds", type=positive_int, default=5, help="K of the K-fold out-of-sample answers (default: 5)")
    p.add_argument("--rank", choices=("self_confidence", "normalized_margin"), default="self_confidence",
                   help="how label suspects are ranked (default: self_confidence)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("evaluate", help="evaluate a saved model: metrics, plots, report.html")
    p.add_argument("checkpoint", help="model.pt (or its run directory)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--with-train", action="store_true",
                   help="also score the training split (else the train accuracy recorded by training is shown)")
    p.add_argument("--out", help="output directory (default: RUN/eval-SPLIT)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=TTA_CHOICES, help="override the model's test-time augmentation")
    add_flags(p, DATA_FLAGS)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files or directories; CSV or JSON out")
    p.add_argument("checkpoint", help="model.pt (or its run directory), or model.onnx from 'fashionclf export'")
    p.add_argument("inputs", nargs="+",
                   help="image files, directories (recursive) or quoted globs ('photos/**/*.jpg'): shop photos "
                        "(JPEG, PNG, WEBP, ...; any size and mode) or 28x28 dataset images")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="torch or onnx (ONNX Runtime; a model.pt is exported in memory); "
                        "auto: the file's own kind (default)")
    p.add_argument("--device", default="cpu", help="torch backend: cpu or cuda (default: cpu)")
    p.add_argument("--graph", choices=GRAPHS, default="fp32", help=GRAPH_HELP)
    p.add_argument("--output", "-o", help="write here instead of stdout")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--top-k", type=positive_int, default=1)
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="add a low_confidence column, true where the top probability is below P (e.g. 0.6), "
                        "for a person to review")
    p.add_argument("--review", metavar="DIR",
                   help="copy (hard-link) every photo that is unknown or below --min-confidence into "
                        "DIR/<predicted label>/ for a person to check; retrain with --data DIR")
    p.add_argument("--explain", metavar="DIR",
                   help="write DIR/<photo>.png per photo: what the model saw, with where it looked for its answer "
                        "(Grad-CAM heatmap), listed in DIR/explained.csv; needs the model.pt")
    p.add_argument("--review-attribute", metavar="NAME",
                   help="a model of several attributes: --review files photos by this attribute's answer and "
                        "its confidence (default: the first attribute's)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="tag on a Dask cluster: local:N (N worker processes here) or a scheduler address "
                        "(tcp://host:8786; the workers must see the files); same rows, same order "
                        "(pip install 'fashionclf[scale]')")
    p.add_argument("--batch-size", type=positive_int, default=PREDICT_BATCH_SIZE,
                   help=f"images per inference call (default: {PREDICT_BATCH_SIZE})")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("review", help="a web page to decide photos' labels by keyboard, into a decisions manifest",
                       description="Open a local page over QUEUE (a predict --review folder, an audit CSV, or any "
                                   "folder of photos): cards ordered by the queue's score, the model's suggestions, "
                                   "keyboard and bulk decisions written at once to the decisions manifest, which "
                                   "train --data reads beside the shop's data.")
    p.add_argument("queue", help="a predict --review folder, a fashionclf audit CSV, or a folder of photos")
    p.add_argument("--model", required=True, help="model.pt (or its run folder, or model.onnx): its suggestions")
    p.add_argument("--decisions", metavar="FILE.csv",
                   help="the decisions manifest (default: QUEUE/decisions.csv, or beside an audit CSV); an "
                        "earlier review's is carried on")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--api-key-file", metavar="PATH",
                   help="beyond this machine: require 'Authorization: Bearer KEY' (the page asks for it), KEY being "
                        "the file's first line (default: $FASHIONCLF_API_KEY if set)")
    p.add_argument("--insecure", action="store_true", help="allow a --host beyond this machine without an API key")
    p.add_argument("--export-label-studio", metavar="TASKS.json",
                   help="instead of the page: write the queue as Label Studio tasks with the model's predictions "
                        "and scores (and TASKS.xml, the labelling interface)")
    p.add_argument("--import-label-studio", metavar="EXPORT.json",
                   help="instead of the page: read Label Studio's JSON-MIN export into the decisions manifest")
    p.add_argument("--document-root", metavar="DIR",
                   help="Label Studio's local-files root the task images are given below (default: the queue's folder)")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("serve", help="HTTP service: POST /predict, GET /health, GET /model, web page at /")
    p.add_argument("checkpoint", help="model.pt (or its run directory), or model.onnx")
    d = ServeSettings  # every default of serve, written once there
    p.add_argument("--host", default=d.host, help=f"default: {d.host} (this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "auto"], default=d.backend,
                   help=f"onnx (ONNX Runtime; a model.pt is exported in memory) or torch (default: {d.backend})")
    p.add_argument("--graph", choices=GRAPHS, default=d.graph, help=GRAPH_HELP)
    p.add_argument("--workers", type=positive_int, default=d.workers,
                   help="server processes, each with its own model copy")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    p.add_argument("--limit-concurrency", type=positive_int, default=d.limit_concurrency, metavar="N",
                   help=f"connections and requests at once per worker process; beyond, 503 "
                        f"(default: {d.limit_concurrency})")
    p.add_argument("--timeout-keep-alive", type=seconds, default=d.timeout_keep_alive, metavar="S",
                   help=f"seconds an idle keep-alive connection stays open (default: {d.timeout_keep_alive:g})")
    p.add_argument("--header-timeout", type=seconds, default=d.header_timeout, metavar="S",
                   help=f"seconds a client has to send a request's headers; then 408 "
                        f"(default: {d.header_timeout:g})")
    p.add_argument("--docs", action="store_true", help="serve the API's documentation at /docs and /openapi.json")
    p.add_argument("--api-key-file", metavar="PATH",
                   help="require 'Authorization: Bearer KEY' on /predict, /explain, /model and /metrics, KEY being "
                        "the file's first line (default: $FASHIONCLF_API_KEY if set, else no key)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a --host other than loopback without an API key")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tune", help="search training settings with Optuna (pip install 'fashionclf[scale]')",
                       description="Search training settings with Optuna: each trial trains in OUT/trial-NNNN, "
                                   "reports validation accuracy per epoch (poor trials are pruned); the best is "
                                   "evaluated on test once; OUT gets trials.csv, best.json (for train --config), "
                                   "plots and report.html. Workers on several machines join one study through "
                                   "the same --study and --storage.")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="search around this recipe's settings")
    p.add_argument("--model", help="or around the defaults, for this model")
    p.add_argument("--study", default="fashionclf", help="study name (default: fashionclf)")
    p.add_argument("--storage", help="sqlite:///FILE, journal:FILE (a shared file system) or postgresql://... "
                                     "(default: OUT/study.db)")
    p.add_argument("--n-trials", type=positive_int, default=20, help="trials in all, over every worker (default: 20)")
    p.add_argument("--timeout", help="stop starting trials after this long, e.g. 30m")
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes on this machine (default: 1)")
    p.add_argument("--space", metavar="FILE", help="search space changes, JSON or TOML: "
                                                   '{"lr": {"log": [0.001, 0.01]}, "epochs": {"int": [2, 5]}}')
    p.add_argument("--out", default="runs/tune", help="study folder (default: runs/tune)")
    p.add_argument("--evaluate-best", action="store_true",
                   help="run no trial: summarise the study and evaluate its winner on test, on the machine whose "
                        "file system holds the winner's run folder (the summary of a worker elsewhere says which)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_flags(p, ["data", "verify", "seed", "threads"])
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    p.add_argument("checkpoint", help="model.pt (or its run directory)")
    p.add_argument("--output", "-o", help="ONNX file to write (default: model.onnx beside the checkpoint)")
    p.add_argument("--check-images", type=positive_int, default=1000,
                   help="test images (random ones without the data) run through both backends (default: 1000)")
    p.add_argument("--int8", action="store_true",
                   help="write an int8 (static QDQ) graph instead, default model.int8.onnx, calibrated on training "
                        "images; prints its test accuracy and speed against fp32")
    p.add_argument("--calibration-images", type=positive_int, default=1000, metavar="N",
                   help="with --int8: training images that set the activation ranges (default: 1000)")
    add_flags(p, ["data", "verify"])
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as typed: train --config tells typed flags from defaults
    try:
        return args.func(args)
    except FashionclfError as exc:  # the project's own errors: their message says the fix
        print(f"fashionclf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fashionclf: interrupted (a training run continues with --resume DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
