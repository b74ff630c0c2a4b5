"""Training-time augmentation of uint8 ``(N, 28, 28)`` batches (or ``(N, S, S, 3)`` colour
photos), applied before the model's
``fashionclf.models.contract.preprocess`` (the one preprocessing path shared with inference).

Adding an augmentation: its name in ``AUGMENTATIONS`` and its branch in ``augment``; the
``--augment`` flag, its help and its check follow. torch is imported inside ``augment`` so
that the command line can read ``AUGMENTATIONS`` without loading torch.
"""

from __future__ import annotations

import math

AUGMENTATIONS = ("flip", "shift", "rotate", "erase", "photo")


def augment(images: torch.Tensor, policy: list[str], generator: torch.Generator, max_shift: int = 2,
            max_degrees: float = 10.0, erase_p: float = 0.5, erase_area: tuple[float, float] = (0.02, 0.25)
            ) -> torch.Tensor:
    """Random training-time changes to a uint8 ``(N, H, W)`` grey or ``(N, H, W, 3)`` colour
    batch, drawn from ``generator``
    so that a seeded run is repeatable. ``flip``: mirror left-right with probability 1/2
    (garments are left-right symmetric in meaning). ``shift``: move each image by up to
    ``max_shift`` pixels in each direction, filling with black (the dataset's background).
    ``rotate``: turn each image by up to ``max_degrees`` either way (bilinear, black fill).
    ``erase``: with probability ``erase_p``, black out a rectangle covering ``erase_area`` of
    the image, aspect ratio 1/3 to 3 (random erasing, Zhong et al. 2017). ``photo``: what
    turning a shop's photo into model input does to an image, for models that will tag
    photos: each image's intensities remapped by a random gamma in [1/1.5, 1.5] (a garment's
    colours map to other greys than the originals'), then blurred or sharpened by a random
    amount (resampling and JPEG soften, the conversion's unsharp mask sharpens).

    Applied on the source images, batched, before ``preprocess``: the cheapest place, and
    evaluation then differs from training only by these changes. What is uncovered (shift,
    rotate, erase) is filled with the background: black for the dataset's grey images, white
    for colour photos (``photos.photo_to_rgb`` letterboxes most on white)."""
    import torch
    import torch.nn.functional as F

    colour = images.ndim == 4
    fill = 255 if colour else 0
    images = images.permute(0, 3, 1, 2) if colour else images.unsqueeze(1)  # (N, C, H, W)
    n, c, h, w = images.shape
    if "flip" in policy:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
    if "shift" in policy:
        s = max_shift
        padded = F.pad(images, (s, s, s, s), value=fill).permute(0, 2, 3, 1)  # (N, H, W, C) for indexing
        offsets = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(images.device)
        rows = offsets[0].view(-1, 1) + torch.arange(h, device=images.device)
        cols = offsets[1].view(-1, 1) + torch.arange(w, device=images.device)
        batch = torch.arange(n, device=images.device).view(-1, 1, 1)
        images = padded[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if "rotate" in policy:
        angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
        cos, sin, zero = angles.cos(), angles.sin(), torch.zeros(n)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(images.device), [n, c, h, w], align_corners=False)
        # grid_sample fills with 0: rotate the distance from the fill value instead
        turned = F.grid_sample(fill - images.float(), grid, mode="bilinear", align_corners=False)
        images = (fill - turned).round_().clamp_(0, 255).to(torch.uint8)
    if "erase" in policy:
        area = torch.empty(n).uniform_(*erase_area, generator=generator) * h * w
        aspect = torch.exp(torch.empty(n).uniform_(-math.log(3), math.log(3), generator=generator))
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
        left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
        on = torch.rand(n, generator=generator) < erase_p
        row, col = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        box = ((row >= top.view(-1, 1, 1)) & (row < (top + eh).view(-1, 1, 1))
               & (col >= left.view(-1, 1, 1)) & (col < (left + ew).view(-1, 1, 1)) & on.view(-1, 1, 1))
        images = images.masked_fill(box.unsqueeze(1).to(images.device), fill)
    if "photo" in policy:
        gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-math.log(1.5), math.log(1.5), generator=generator))
        amount = torch.empty(n, 1, 1, 1).uniform_(-0.6, 0.6, generator=generator)  # < 0 blurs, > 0 sharpens
        x = (images.float() / 255).pow(gamma.to(images.device))
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=images.device) / 16
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)
        x = x + amount.to(images.device) * (x - blurred)
        images = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous() if colour else images.squeeze(1)
