"""Which score flags unknown items best: the top softmax probability or the energy score.

    python benchmarks/unknown.py runs/strong/model.pt [more models...]

For a Fashion-MNIST checkpoint: the temperature is fitted on its own validation split (as
training does), each score's threshold keeps 95% of validation images, and for the
out-of-distribution sets of ``fashionclf.evaluation.ood`` (digits, photo crops, noise; plus the
held-out classes for a class-subset model) the AUROC against the test split and the share
flagged are printed as a Markdown table, one row per model and score.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def scores_of(name: str, logits: np.ndarray, t: float) -> np.ndarray:
    from fashionclf.evaluation import ood

    return ood.softmax(logits, t).max(1) if name == "max softmax probability" else ood.energy_score(logits, t)


def main() -> int:
    import torch

    from fashionclf.data.fashion_mnist import load_dataset, make_splits
    from fashionclf.evaluation import ood
    from fashionclf.inference.checkpoint import load_checkpoint
    from fashionclf.models.contract import predict_logits
    from fashionclf.training.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    from fashionclf.device import cpu_info

    print(f"CPU: {cpu_info()['label']}")
    print("| model | score | test flagged | far-OOD AUROC | far-OOD flagged | near-OOD AUROC | near-OOD flagged |\n"
          "|---|---|---|---|---|---|---|")
    far_images = np.concatenate(list(ood.far_ood_images().values()))
    for path in args.models:
        ckpt = load_checkpoint(path)
        config = TrainConfig.from_dict(ckpt.config)
        model = ckpt.build_model()
        dataset = load_dataset(config.data[0] if config.data else None, ckpt.class_indices, verify=False)
        splits = make_splits(dataset, config.val_fraction, config.seed)

        def logits(images) -> np.ndarray:
            return predict_logits(model, torch.as_tensor(images), ckpt.contract).numpy()

        val, test, far = logits(splits.val_x), logits(splits.test_x), logits(far_images)
        near = None
        if len(ckpt.class_indices) < 10:
            full = load_dataset(config.data[0] if config.data else None, None, verify=False).test
            near = logits(full.images[~np.isin(full.labels, ckpt.class_indices)])
        t = ood.fit_temperature(val, splits.val_y.numpy())
        for name in ("max softmax probability", "energy"):
            threshold = np.quantile(scores_of(name, val, t), 1 - ood.KEEP)
            s_test, s_far = scores_of(name, test, t), scores_of(name, far, t)
            row = [path, name, f"{(s_test < threshold).mean():.1%}", f"{ood.auroc(s_test, s_far):.3f}",
                   f"{(s_far < threshold).mean():.1%}"]
            if near is not None:
                s_near = scores_of(name, near, t)
                row += [f"{ood.auroc(s_test, s_near):.3f}", f"{(s_near < threshold).mean():.1%}"]
            else:
                row += ["", ""]
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
