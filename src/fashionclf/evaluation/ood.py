"""Calibration and "unknown": a model that says when an item is none of its classes.

After training, on the validation split (never the test split):

1. **Temperature scaling** (Guo et al. 2017): one scalar T that divides the logits, fitted
   by minimising the negative log-likelihood; it leaves every prediction's label unchanged
   and makes the reported confidence honest. The expected calibration error (ECE, 15 equal
   bins) is reported before and after.
2. **An in-distribution score and its threshold.** The score is the negative free energy
   ``T * logsumexp(logits / T)`` (Liu et al. 2020, "Energy-based out-of-distribution
   detection"): unlike the top softmax probability it keeps the logits' magnitude, which
   drops on inputs far from the training data. Measured on the strong recipe's model against
   digits, photo crops and noise converted like photos: AUROC 0.985 (energy) against 0.957
   (top probability), 95% against 70% of them flagged at the same 95% keep rate (figures that
   do not depend on the CPU; measured on a 2-core AMD EPYC Zen 4); energy was
   ahead for every model measured (``benchmarks/unknown.py``, docs/results.md).
   The threshold keeps ``KEEP`` of the validation images; below it, a prediction is "unknown".

Both travel in the checkpoint (``ckpt["unknown"]``) and in the ONNX graph's second output
(``score``), so predict and serve flag unknowns with either backend.
"""

from __future__ import annotations

import numpy as np

from fashionclf.data.photos import PhotoTarget

KEEP = 0.95  # share of validation images above the threshold: 5% of in-distribution items flagged
ECE_BINS = 15
SCORE = "energy"


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the validation NLL (a bounded 1-D search on log T).
    Without a single validation mistake the NLL only falls as T shrinks, which says nothing
    about calibration: T stays 1 then (small validation splits of easy classes do this)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0 or (np.asarray(logits).argmax(1) == labels).all():
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, np.float64) / temperature))


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``T * logsumexp(logits / T)``: high for inputs like the training data, low for others."""
    z = np.asarray(logits, np.float64) / temperature
    top = z.max(1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(1)))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: mean confidence, accuracy and count; and the ECE (their weighted gap)."""
    conf = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.bincount(which, conf, bins) / np.maximum(count, 1)
    accuracy = np.bincount(which, correct.astype(float), bins) / np.maximum(count, 1)
    ece = float((count / max(len(labels), 1) * np.abs(mean_conf - accuracy)).sum())
    return {"edges": edges.tolist(), "confidence": mean_conf.tolist(), "accuracy": accuracy.tolist(),
            "count": count.tolist(), "ece": ece}


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray) -> dict:
    """The checkpoint's ``unknown`` entry: temperature, score, threshold, and the calibration
    figures on the validation split that chose them."""
    t = fit_temperature(val_logits, val_labels)
    scores = energy_score(val_logits, t)
    return {
        "score": SCORE,
        "temperature": t,
        "threshold": float(np.quantile(scores, 1 - KEEP)),
        "keep": KEEP,
        "val_nll_before": nll(val_logits, val_labels), "val_nll_after": nll(val_logits, val_labels, t),
        "val_ece_before": reliability(softmax(val_logits), val_labels)["ece"],
        "val_ece_after": reliability(softmax(val_logits, t), val_labels)["ece"],
    }


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an in-distribution image scores above an out-of-distribution one."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def ood_report(unknown: dict, in_scores: np.ndarray, sets: dict[str, np.ndarray]) -> dict:
    """For each named out-of-distribution set's scores: AUROC against ``in_scores`` and the
    share flagged unknown at the stored threshold; and the share of in-distribution flagged."""
    t = unknown["threshold"]
    report = {"in_distribution_flagged": float((in_scores < t).mean()) if len(in_scores) else None}
    for name, scores in sets.items():
        if len(scores):
            report[name] = {"images": int(len(scores)), "auroc": auroc(in_scores, scores),
                            "flagged": float((scores < t).mean())}
    return report


def far_ood_images(seed: int = 0, contract: PhotoTarget | None = None) -> dict[str, np.ndarray]:
    """Images that are not garments, made into input for a model of ``contract`` the way
    photos are (``photos.photo_converter``; default: the 28x28 grey contract): scikit-learn's bundled handwritten digits (500) and crops of its
    two sample photos (300), and uniform noise (100). Blank images are refused by the photo
    conversion itself, so they never reach the model. Made once per process and conversion."""
    from fashionclf.data.photos import photo_converter

    to_input, conversion = photo_converter(contract)
    if (seed, conversion) not in _FAR_OOD:
        _FAR_OOD[(seed, conversion)] = _make_far_ood(seed, to_input)
    return _FAR_OOD[(seed, conversion)]


_FAR_OOD: dict[tuple[int, str], dict[str, np.ndarray]] = {}


def _make_far_ood(seed: int, to_input) -> dict[str, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    from fashionclf.data.photos import PhotoError

    rng = np.random.default_rng(seed)
    digits = [to_input(Image.fromarray((255 - d * 16).clip(0, 255).astype(np.uint8)).resize((80, 80)))
              for d in load_digits().images[:500]]
    crops = []
    photos = load_sample_images().images
    while len(crops) < 300:
        im = photos[len(crops) % len(photos)]
        side = int(rng.integers(40, 160))
        y, x = int(rng.integers(0, im.shape[0] - side)), int(rng.integers(0, im.shape[1] - side))
        try:
            crops.append(to_input(Image.fromarray(im[y : y + side, x : x + side])))
        except PhotoError:  # a uniform patch of sky: blank, refused before the model
            continue
    noise = []
    for _ in range(100):
        try:
            noise.append(to_input(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))))
        except PhotoError:  # noise everywhere: no item stands out from it, refused before the model
            continue
    sets = {"digits": digits, "photo_crops": crops, "noise": noise}
    return {name: np.stack(images) for name, images in sets.items() if images}
