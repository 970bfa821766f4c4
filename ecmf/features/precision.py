"""Mixed precision of the encoders and detectors on a GPU: the autocast dtype a `precision`
setting gives on a device, and the autocast context for it (float32 features whatever it is)."""

from __future__ import annotations

import contextlib

from ecmf.config import PRECISIONS
from ecmf.errors import InputError


def autocast_dtype(device: str, precision: str = "auto", bf16: bool | None = None):
    """The dtype a model's forward passes run in under autocast on `device`, None for fp32.

    CPU: always None. CUDA: "auto" is bfloat16 where the GPU supports it (`bf16`; None asks
    torch), else float16; "bf16" and "fp16" force one; "fp32" turns autocast off.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"encoder.precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or not str(device).startswith("cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if bf16 is None:
        bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16:
        raise InputError("encoder.precision: bf16, but this GPU has no bfloat16 support; "
                         "use auto or fp16")
    return torch.bfloat16 if bf16 else torch.float16


def autocast(device: str, dtype):
    """torch.autocast on `device`'s type in `dtype`; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(str(device).split(":")[0], dtype=dtype)
