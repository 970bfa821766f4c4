"""Cache keys of the semi-supervised stages: digests of what a result was computed from, so a
stage can tell a result on disk still matches its inputs and settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """The digest of a file's bytes; None when there is no such file."""
    return sha256_hex(path.read_bytes()) if path.is_file() else None


def frame_sha256(frame: pd.DataFrame) -> str:
    """The digest of a table's values as CSV (column names and row order count)."""
    return sha256_hex(frame.to_csv(index=False).encode())


def changed_keys(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two cache keys (for logs and errors)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["nothing"]
