"""The ``fashionclf`` command: parse, call one library function, print.

Exit status: 0 success; 1 some inputs failed (predict); 2 usage or data error, with one
line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import FashionclfError


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory with the four Fashion-MNIST IDX files (.gz or raw)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the SHA-256 check of the data (for a deliberately modified copy)")


def cmd_data(args) -> int:
    from .data import describe

    info = describe(args.data_dir, args.classes, args.verify, args.val_fraction, args.seed, args.grid)
    print(f"data: {info['source']} (SHA-256 {info['verification']})")
    width = max(len(c) for c in info["classes"])
    print(f"{'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for i, name in enumerate(info["classes"]):
        print(f"{name:<{width}}  " + " ".join(f"{info['counts'][s][i]:>6}" for s in ("train", "val", "test")))
    print(f"{'total':<{width}}  " + " ".join(f"{sum(info['counts'][s]):>6}" for s in ("train", "val", "test")))
    if "grid" in info:
        print(f"sample grid: {info['grid']}")
    return 0


def cmd_models(args) -> int:
    from .models import count_parameters, create_model, get_model_entry, list_models

    for name in list_models():
        entry = get_model_entry(name)
        params = count_parameters(create_model(name, num_classes=args.num_classes))
        size = f"{entry.input_size}x{entry.input_size}x{entry.preprocessing['channels']}"
        print(f"{name:<16} {params:>10,} params  {size:>9} input  {entry.description}")
    return 0


def cmd_train(args) -> int:
    from .train import RECIPES, TrainConfig, fit

    if args.recipe:
        args.model = RECIPES[args.recipe]
    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__})
    metrics = fit(config, resume=args.resume)
    print(f"test_accuracy {metrics['test_accuracy']:.4f}  ({args.resume or config.out}/metrics.json)")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_checkpoint

    s = evaluate_checkpoint(args.checkpoint, args.split, args.out, args.data_dir, args.verify, args.device, args.tta)
    acc = "  ".join(f"{k} {v:.4f}" for k, v in s["accuracies"].items())
    print(f"{s['model']} on {s['split']}: accuracy {s['accuracy']:.4f}, loss {s['loss']:.4f}")
    print(f"accuracy side by side: {acc}")
    if s["overfitting"]["flag"]:
        print(f"warning: {s['overfitting']['hint']}")
    print(f"report: {s['files']['report_html']}")
    return 0


def cmd_predict(args) -> int:
    from .predict import tag_files

    kwargs = dict(fmt=args.format, top_k=args.top_k, batch_size=args.batch_size,
                  min_confidence=args.min_confidence, backend=args.backend, device=args.device)
    if args.output:
        with open(args.output, "w", newline="") as f:
            counts = tag_files(args.checkpoint, args.inputs, f, **kwargs)
    else:
        counts = tag_files(args.checkpoint, args.inputs, sys.stdout, **kwargs)
    if counts["low_confidence"]:
        print(f"{counts['low_confidence']} of {counts['rows']} rows below --min-confidence "
              f"{args.min_confidence} (low_confidence=true)", file=sys.stderr)
    if counts["failed"]:
        print(f"{counts['failed']} of {counts['rows']} inputs failed (see the error column)", file=sys.stderr)
    return 1 if counts["failed"] else 0


def cmd_export(args) -> int:
    from .export import export_onnx

    r = export_onnx(args.checkpoint, args.output, args.data_dir, args.check_images)
    print(f"wrote {r['output']} ({r['bytes'] / 1e6:.2f} MB, opset {r['opset']}, {r['export_seconds']:.1f} s)")
    print(f"parity on {r['checked_on']}: max |p_onnx - p_torch| = {r['max_abs_diff']:.2e} "
          f"(tolerance {r['tolerance']:.0e}), same top class for {r['argmax_agreement']:.2%}: {r['parity']}")
    return 0 if r["parity"] == "ok" else 1


def cmd_serve(args) -> int:
    from .serve import serve

    serve(args.checkpoint, args.host, args.port, args.backend, args.workers, args.access_log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .evaluate import TTA_CHOICES
    from .inference import BACKENDS
    from .train import BN_POLICIES, DEFAULTS, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES, TrainConfig
    from .transforms import AUGMENTATIONS

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="fashionclf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fashionclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="find and verify the data, show class counts, save a sample grid")
    _data_args(p)
    p.add_argument("--classes", help="class subset, e.g. 'tshirt,sneaker,bag' (default: all ten)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--grid", metavar="FILE.png", help="save a labelled grid of sample images")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model and write a run directory. Settings left out take the "
                                   "model's defaults (fashionclf.train.DEFAULTS and the model's entry); "
                                   "DIR/config.json records every value used.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=d.model, help=f"a name from 'fashionclf models' (default: {d.model})")
    which.add_argument("--recipe", choices=sorted(RECIPES),
                       help="a model with its training recipe: "
                            + ", ".join(f"{k} = --model {v}" for k, v in sorted(RECIPES.items()))
                            + "; flags given with it override the recipe")
    p.add_argument("--classes", help="class subset by name, alias or index, e.g. tshirt,sneaker,bag (default: all)")
    p.add_argument("--weights", help="pretrained start: imagenet, none, or PATH of a state-dict file "
                                     "(default: imagenet for models that have it, else none)")
    p.add_argument("--image-size", type=int, help="input side after resizing the 28x28 images (default: model's)")
    p.add_argument("--epochs", "--finetune-epochs", type=int, dest="epochs",
                   help=f"epochs of the main (fine-tuning) phase (default: {DEFAULTS['epochs']})")
    p.add_argument("--batch-size", type=int, help=f"default: {DEFAULTS['batch_size']}")
    p.add_argument("--lr", "--finetune-lr", type=float, dest="lr",
                   help=f"peak learning rate of the main (fine-tuning) phase (default: {DEFAULTS['lr']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {DEFAULTS['optimizer']}")
    p.add_argument("--weight-decay", type=float, help=f"default: {DEFAULTS['weight_decay']}")
    p.add_argument("--lr-schedule", choices=SCHEDULES, help=f"per phase (default: {DEFAULTS['lr_schedule']})")
    p.add_argument("--augment", help=f"training batches only: none, or a list of {', '.join(AUGMENTATIONS)} "
                                     f"(default: {DEFAULTS['augment']})")
    p.add_argument("--head-epochs", type=int,
                   help="phase 1: epochs training only the new head on the frozen base (0: no phase 1)")
    p.add_argument("--head-lr", type=float, help=f"learning rate of phase 1 (default: {DEFAULTS['head_lr']})")
    p.add_argument("--unfreeze", help="main phase trains 'all' of the base or its last N blocks (default: all)")
    p.add_argument("--bn-policy", choices=BN_POLICIES,
                   help="main phase: 'frozen' keeps BatchNorm in inference mode (running statistics "
                        "untouched), 'train' updates it (default: frozen for pretrained weights, else train)")
    p.add_argument("--label-smoothing", type=float, help="e.g. 0.1 (default: 0)")
    p.add_argument("--ema", type=float, help="evaluate and keep an exponential moving average of the weights "
                                             "with this per-step decay, e.g. 0.999 (default: 0, off)")
    p.add_argument("--tta", choices=TTA_CHOICES,
                   help="test-time augmentation kept in the model: flip averages each image with its mirror "
                        "in evaluation and prediction (default: none)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="training arithmetic: fp32, bf16 (autocast; weights stay fp32), or auto: bf16 where the "
                        "CPU/GPU has it in hardware (default: fp32; the recipes: auto). Evaluation is fp32")
    p.add_argument("--no-cache-features", dest="cache_features", action="store_false",
                   help="phase 1 without augmentation: run the frozen base every epoch instead of once")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes split, initial weights, batch order (default: 0)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="default: 0.1")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", default=d.out, help=f"run directory (default: {d.out})")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last.pt")
    _data_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a saved model: metrics, plots, report.html")
    p.add_argument("checkpoint", help="model.pt (or its run directory)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--out", help="output directory (default: RUN/eval-SPLIT)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", choices=TTA_CHOICES, help="override the model's test-time augmentation")
    _data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files or directories; CSV or JSON out")
    p.add_argument("checkpoint", help="model.pt (or its run directory), or model.onnx from 'fashionclf export'")
    p.add_argument("inputs", nargs="+",
                   help="image files, directories (recursive) or quoted globs ('photos/**/*.jpg'): shop photos "
                        "(JPEG, PNG, WEBP, ...; any size and mode) or 28x28 dataset images")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="torch or onnx (ONNX Runtime; a model.pt is exported in memory); "
                        "auto: the checkpoint's own kind (default)")
    p.add_argument("--device", default="cpu", help="torch backend: cpu or cuda (default: cpu)")
    p.add_argument("--output", "-o", help="write here instead of stdout")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="add a low_confidence column, true where the top probability is below P (e.g. 0.6), "
                        "for a person to review")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="HTTP service: POST /predict, GET /health, GET /model, web page at /")
    p.add_argument("checkpoint", help="model.pt (or its run directory), or model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                   help="onnx (ONNX Runtime; a model.pt is exported in memory) or torch (default: onnx)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    p.add_argument("checkpoint", help="model.pt (or its run directory)")
    p.add_argument("--output", "-o", help="ONNX file to write (default: model.onnx beside the checkpoint)")
    p.add_argument("--check-images", type=int, default=1000,
                   help="test images (random ones without the data) run through both backends (default: 1000)")
    _data_args(p)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FashionclfError as exc:
        print(f"fashionclf: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. an unknown model name from the registry
        print(f"fashionclf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fashionclf: interrupted (a training run continues with --resume DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
