"""Where torch runs, by one rule for every component, and what may cross a Ray boundary.

- `device_for`: a component asked for a GPU (`key` names the setting) runs on CUDA, and fails
  naming the key where this process sees none: a GPU node whose driver is too old for the
  image's CUDA looks exactly like that, and falling back to one CPU thread would run for weeks
  while the job looks healthy. The simulated cluster, whose fake GPU nodes have no CUDA, opts
  in to CPU execution explicitly with `SIMULATED_GPUS_ENV=1`; no production config sets it.
- `to_host`: what a task or actor returns to the driver is host memory (NumPy or CPU tensors):
  a CUDA tensor cannot be unpickled by a driver whose torch has no CUDA (the CPU head's image).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket

import numpy as np

from ecmf.errors import UserError

log = logging.getLogger(__name__)
# Set by the simulated cluster (`-m autoscale`) alone: a GPU asked for runs on the CPU there.
SIMULATED_GPUS_ENV = "ECMF_SIMULATED_GPUS"
_warned: set[str] = set()


class NoCuda(UserError):
    """A GPU was asked for where this process sees no CUDA."""


def simulated_gpus() -> bool:
    return os.environ.get(SIMULATED_GPUS_ENV) == "1"


def device_for(gpu: bool | float, key: str):
    """The torch device of a component whose setting `key` asks for a GPU (`gpu` > 0) or not.

    Ray hands a GPU task or actor its GPU as CUDA device 0 (CUDA_VISIBLE_DEVICES). Without CUDA
    here, a GPU asked for raises `NoCuda` naming `key`, unless `SIMULATED_GPUS_ENV` is 1."""
    import torch

    if not gpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if simulated_gpus():
        if key not in _warned:
            _warned.add(key)
            log.warning("%s asks for a GPU and %s sees no CUDA: running on the CPU because %s=1 "
                        "(the simulated cluster's opt-in; never set it in production)", key,
                        socket.gethostname(), SIMULATED_GPUS_ENV)
        return torch.device("cpu")
    raise NoCuda(
        f"{key} asks for a GPU, but node {socket.gethostname()} sees no CUDA (torch "
        f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). The NVIDIA "
        f"driver may be older than the image's CUDA needs (docker/README.md names the minimum), "
        f"or the node's image has a CPU build of torch. Set {key} to 0 (false) to run on the CPU.")


def to_host(obj):
    """`obj` with every torch tensor inside it (dicts, lists, tuples, dataclasses) moved to the
    CPU and detached; NumPy arrays and plain values as they are. Whatever a Ray task or actor
    hands back to the driver passes through here."""
    if isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, np.generic)):
        return obj
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [to_host(v) for v in obj]
        return type(obj)(out) if not hasattr(obj, "_fields") else type(obj)(*out)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_host(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        return obj.detach().cpu()
    return obj


def device_tensors(obj, path: str = "result") -> list[str]:
    """Where `obj` still holds a tensor outside host memory ([] when none): the check that a
    result crossing to the driver is host memory."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in device_tensors(v, f"{path}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in device_tensors(v, f"{path}[{i}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [p for f in dataclasses.fields(obj)
                for p in device_tensors(getattr(obj, f.name), f"{path}.{f.name}")]
    device = getattr(obj, "device", None)
    if type(obj).__module__.startswith("torch") and device is not None and device.type != "cpu":
        return [f"{path} on {device}"]
    return []
