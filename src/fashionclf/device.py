"""Where training and inference run: device selection and the hardware-bf16 probe."""

from __future__ import annotations

import functools

import torch

from .errors import UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; asking for CUDA without it is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}; valid: auto, cpu, cuda, cuda:N") from None


@functools.lru_cache(maxsize=None)  # asked at config resolution and again at training start
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: CUDA that supports it, or a CPU with
    AMX or AVX512-BF16 (measured on one: a training step in 0.5-0.7x the fp32 time; without
    them bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training's forward pass runs in under autocast for ``--precision``
    (fp32 | bf16 | auto); None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None
