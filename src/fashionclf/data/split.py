"""``SplitSettings``: how data without splits of its own is split. Imports nothing heavy (the
settings table and the command line read its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitSettings:
    """Shares held out, per class and seeded: validation from the training data (Fashion-MNIST
    and photos), test from photos without a test split of their own."""

    val_fraction: float = 0.1  # as the second reference program; 0: no validation, the last epoch is kept
    test_fraction: float = 0.2  # a few hundred photos per class leave 20% enough to measure on
    seed: int = 0
