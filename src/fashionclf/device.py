"""Where training and inference run: device selection and the hardware-bf16 probe."""

from __future__ import annotations

import functools
import os

import torch

from fashionclf.errors import UsageError


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
    cap = onednn_isa_cap()
    if cap and not any(k in cap.upper() for k in ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")):
        return False  # oneDNN told to stay below the bf16 instructions: bf16 would be emulated
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_info()["flags"]))


def onednn_isa_cap() -> str | None:
    """oneDNN's instruction-set ceiling when the environment sets one (e.g. ``AVX2``)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


# The extensions that decide how fast these networks train and run on a CPU.
ISA_NAMES = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


@functools.lru_cache(maxsize=None)
def cpu_info() -> dict:
    """This machine's CPU: model name, family/model numbers (two "AMD EPYC" can be Zen 3 or
    Zen 4), cores, and which of ``ISA_NAMES`` it has; ``label`` says it in one line, for every
    published figure (the same run is 2-3x slower on one kind than another)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    import platform

    flags = [name for name in ISA_NAMES if name in fields.get("flags", "").split()]
    name = fields.get("model name") or platform.processor() or platform.machine()
    numbers = f" (family {fields['cpu family']} model {fields['model']})" if "cpu family" in fields else ""
    isa = " ".join(ISA_NAMES[f] for f in flags if f != "fma") or "no AVX2"
    # Instruction sets held back by the environment: figures then belong to the capped ISA.
    caps = {k: v for k, v in (("ONEDNN_MAX_CPU_ISA", onednn_isa_cap()),
                              ("ATEN_CPU_CAPABILITY", os.environ.get("ATEN_CPU_CAPABILITY"))) if v}
    capped = "; capped by " + ", ".join(f"{k}={v}" for k, v in caps.items()) if caps else ""
    return {"cpu": name, "family": fields.get("cpu family"), "model": fields.get("model"), "cores": os.cpu_count(),
            "flags": flags, "caps": caps, "label": f"{name}{numbers}, {os.cpu_count()} cores, {isa}{capped}"}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training's forward pass runs in under autocast for ``--precision``
    (fp32 | bf16 | auto); None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None
