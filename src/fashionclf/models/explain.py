"""Where a model looked: Grad-CAM heatmaps (Selvaraju et al. 2017) for any registered model,
and overlays of them on what the model saw.

Grad-CAM weighs the last feature map that still has a layout (the last module whose output is
``(N, C, H, W)`` with H, W >= 2: found once per model by a forward pass) by the mean gradient
of the chosen class's logit per channel, keeps the positive part and scales it up to the
model's input. Written as a few hooks here rather than taken from pytorch-grad-cam (which
brings OpenCV, scikit-image and ttach) or Captum: about 30 lines, no dependency, and one
code path for every model of the registry, whose last spatial map is the one to look at.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.models.contract import InputContract, preprocess

BATCH = 64  # images per backward pass: a 28x28 CNN's maps for 64 images take a few MB


def target_layer(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """The last module whose output is a feature map with a layout (4-D, at least 2x2)."""
    found: list[nn.Module] = []

    def note(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) >= 2:
            found.append(module)

    handles = [m.register_forward_hook(note) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise ValueError(f"{type(model).__name__} has no feature map with a layout to explain")
    return found[-1]


def grad_cam(model: nn.Module, images: np.ndarray, contract: InputContract, targets: np.ndarray | None = None,
             outputs: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps ``(N, S, S)`` in [0, 1] (S: the model's input side) for uint8 ``images`` as the
    model takes them, each for its ``targets`` value among the logits ``outputs`` (an
    attribute's slice; default: the predicted one), and the targets used."""
    model.eval()
    x_all = preprocess(torch.from_numpy(np.ascontiguousarray(images)), contract)
    layer = target_layer(model, x_all[:1])
    maps, chosen = [], []
    for start in range(0, len(x_all), BATCH):
        x = x_all[start : start + BATCH]
        kept: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
            kept["a"] = output
            output.register_hook(lambda g: kept.__setitem__("g", g))

        handle = layer.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                z = model(x.requires_grad_(True)).float()[:, outputs]
                t = z.argmax(1) if targets is None else torch.as_tensor(targets[start : start + BATCH])
                z.gather(1, t[:, None]).sum().backward()
        finally:
            handle.remove()
        a, g = kept["a"].detach().float(), kept["g"].float()
        cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        top = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
        maps.append((cam / top).numpy())
        chosen.append(t.numpy())
    model.zero_grad(set_to_none=True)
    return np.concatenate(maps), np.concatenate(chosen)


def colormap(heat: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 from dark red through orange to yellow-white (a heat scale)."""
    h = np.clip(heat, 0, 1)[..., None]
    rgb = np.concatenate([np.clip(3 * h, 0, 1), np.clip(3 * h - 1, 0, 1), np.clip(3 * h - 2, 0, 1)], -1)
    return (255 * rgb).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 4) -> np.ndarray:
    """``heat`` over ``image`` (uint8, grey or colour, as the model saw it), enlarged ``scale``
    times: RGB uint8 ``(S*scale, S*scale, 3)``; the hotter, the more of the heat colour."""
    side = heat.shape[-1]
    base = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
    if base.shape[0] != side:
        from PIL import Image

        base = np.asarray(Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR))
    alpha = (0.65 * np.clip(heat, 0, 1) ** 0.8)[..., None]
    mixed = (base.astype(np.float32) * (1 - alpha) + colormap(heat).astype(np.float32) * alpha).astype(np.uint8)
    return np.kron(mixed, np.ones((scale, scale, 1), np.uint8))


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()
