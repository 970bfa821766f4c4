"""Keys of results on disk: what a result was computed from (settings and digests of its
inputs), and the one mechanism every stage uses to tell whether a result still matches.

A `Stamp` is a result's key file. It is written last, so its presence marks the result
finished; `Stamp.changes(key)` says, readably, what differs from the key a run would write:
the fit's resume (`ray_run.json`), the weak classifiers (`refine/weak_key.json`), refinement
(`refine/refine_key.json`) and each pseudo-label round (`rounds/<k>/round_key.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd

_DIGEST = re.compile(r"^[0-9a-f]{16,64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """The digest of a file's bytes; None when there is no such file."""
    return sha256_hex(path.read_bytes()) if path.is_file() else None


def frame_sha256(frame: pd.DataFrame) -> str:
    """The digest of a table's values as CSV (column names and row order count)."""
    return sha256_hex(frame.to_csv(index=False).encode())


def _show(value) -> str:
    if isinstance(value, str) and _DIGEST.match(value):
        return f"<{value[:8]}>"  # a digest: its first characters tell old from new
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def diff(old, new, prefix: str = "") -> list[str]:
    """What differs between two keys, one readable line per changed leaf: `pseudo.threshold:
    0.3 -> 0.5`, `labels_sha256: <1a2b3c4d> -> <5e6f7a8b>` (digests shortened), `weak: added`;
    [] when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{name}: added")
            elif k not in new:
                out.append(f"{name}: removed")
            else:
                out.extend(diff(old[k], new[k], name))
        return out
    return [] if old == new else [f"{prefix or 'key'}: {_show(old)} -> {_show(new)}"]


class Stamp:
    """The key file of one result (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict | None:
        """The key written with the result, or None: no result, or an unfinished one."""
        return json.loads(self.path.read_text()) if self.path.is_file() else None

    def write(self, key: dict) -> Path:
        """Write `key` whole (a temporary file renamed over it): the result is finished."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        return self.path

    def changes(self, key: dict) -> list[str] | None:
        """None when there is no finished result; else `diff(written, key)` ([]: it matches)."""
        old = self.read()
        return None if old is None else diff(old, key)
