"""MERTools feature folders read for import: `<model>-UTT` / `<model>-FRA` folders of one .npy per
clip, found in a tree (`find_tree`) or named by `--from`, probed for kind and dimension, and loaded
file by file with checks that name file and shape. `ecmf.features.mertools` imports them."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecmf.errors import InputError, MissingInput

_HEADER_LOCK = threading.Lock()  # serialises a retried np.load (see `load`)

log = logging.getLogger(__name__)

UTT, FRA = "utt", "fra"
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
PROBE_FILES = 32  # files read to find a folder's dimension (the most common one wins)


class BadFeatureFile(InputError):
    """A .npy that cannot be read or has the wrong shape; the message names file and shape."""


@dataclass
class Source:
    """One MERTools folder of feature `feature`: its kind, files by sample name and dimension."""

    feature: str
    folder: Path
    kind: str
    files: dict[str, Path]
    dim: int

    def expected(self) -> str:
        return f"({self.dim},) or (1, {self.dim})" if self.kind == UTT else f"(T, {self.dim})"

    def load(self, name: str) -> np.ndarray | None:
        """float32 [D] (UTT) or [T, D] (FRA) of sample `name`; None when it has no file here."""
        path = self.files.get(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                head = f.read(len(NPY_MAGIC))
        except OSError as e:
            raise BadFeatureFile(f"{path}: cannot be opened ({e})") from None
        if head != NPY_MAGIC:  # np.load would call it pickled data, which misleads
            raise BadFeatureFile(f"{path}: not a NumPy .npy file (it starts with {head!r}, not "
                                 f"{NPY_MAGIC!r}); expected a float array of shape "
                                 f"{self.expected()} saved with numpy.save")
        try:
            try:
                x = np.load(path, allow_pickle=False)
            except SystemError:
                # CPython 3.11's AST constructor (numpy parses the .npy header with it) is not
                # safe in threads: "AST constructor recursion depth mismatch" on a good file.
                # Once more, alone.
                with _HEADER_LOCK:
                    x = np.load(path, allow_pickle=False)
        except Exception as e:  # truncated, pickled objects: all unreadable to us
            raise BadFeatureFile(f"{path}: unreadable ({type(e).__name__}: {e}); expected a "
                                 f"float array of shape {self.expected()}") from None
        ok = np.issubdtype(x.dtype, np.number) and x.shape[-1:] == (self.dim,)
        if self.kind == UTT:
            ok = ok and (x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1))
        else:
            ok = ok and x.ndim == 2 and x.shape[0] > 0
        if not ok:
            raise BadFeatureFile(f"{path}: shape {x.shape} dtype {x.dtype}; expected shape "
                                 f"{self.expected()} like the rest of {self.folder}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise BadFeatureFile(f"{path}: holds NaN or infinite values")
        return x.reshape(-1) if self.kind == UTT else x


def parse_sources(items: list[str]) -> dict[str, list[Path]]:
    """`feature=FOLDER` items (as `--from` takes them) -> feature -> its folders."""
    out: dict[str, list[Path]] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        name = name.strip()
        if not sep or not name or not folder.strip():
            raise InputError(f"--from {item!r}: expected FEATURE=FOLDER, e.g. "
                             f"audio=features/chinese-hubert-large-UTT")
        out.setdefault(name, []).append(Path(folder.strip()).expanduser())
    return out


def _list_npy(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise MissingInput(f"feature folder {folder} does not exist")
    with os.scandir(folder) as it:
        files = {Path(e.name).stem: Path(e.path) for e in it
                 if e.name.endswith(".npy") and e.is_file()}
    if not files:
        raise MissingInput(f"feature folder {folder} holds no .npy files")
    return files


def _probe(feature: str, folder: Path, files: dict[str, Path]) -> Source:
    """Kind (from the folder's -UTT/-FRA suffix, else the arrays' shape) and dimension."""
    shapes = []
    for name in sorted(files)[:PROBE_FILES]:
        try:
            shapes.append(np.load(files[name], mmap_mode="r", allow_pickle=False).shape)
        except Exception:  # noqa: BLE001 - a corrupt file is reported when it is imported
            continue
    shapes = [s for s in shapes if len(s) in (1, 2) and s[-1] > 0]
    if not shapes:
        raise InputError(f"feature folder {folder}: none of its first {PROBE_FILES} .npy files "
                         f"holds a [D] or [T, D] array")
    suffix = folder.name.upper()
    if suffix.endswith("-UTT"):
        kind = UTT
    elif suffix.endswith("-FRA"):
        kind = FRA
    else:  # no MERTools suffix: utterance vectors are 1-D or a single row
        kind = UTT if all(len(s) == 1 or s[0] == 1 for s in shapes) else FRA
    dim = Counter(s[-1] for s in shapes).most_common(1)[0][0]
    return Source(feature, folder, kind, files, int(dim))


def open_sources(folders: dict[str, str | Path | list]) -> dict[str, dict[str, Source]]:
    """feature -> {"utt": Source, "fra": Source} (either or both) for `folders`."""
    out: dict[str, dict[str, Source]] = {}
    for feature, given in folders.items():
        paths = [Path(p) for p in (given if isinstance(given, (list, tuple)) else [given])]
        for path in paths:
            src = _probe(feature, path, _list_npy(path))
            if src.kind in out.setdefault(feature, {}):
                raise InputError(f"feature {feature!r}: two {src.kind.upper()} folders "
                                 f"({out[feature][src.kind].folder} and {path}); give one "
                                 f"utterance (-UTT) and at most one frame-level (-FRA) folder")
            out[feature][src.kind] = src
    if not out:
        raise InputError("no feature folders given (--from FEATURE=FOLDER)")
    return out


def feature_name(model: str) -> str:
    """A MERTools model name as a feature name of the store: lower-case, [a-z0-9_] only."""
    return re.sub(r"[^a-z0-9_]", "_", model.lower())


def find_tree(root: str | Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Every `<model>-UTT` and `<model>-FRA` folder directly under `root` (MERTools' feature
    tree) -> (feature_name(model) -> its folders, folders skipped because they hold no .npy)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingInput(f"--mertools {root}: not a directory")
    found: dict[str, list[Path]] = {}
    models: dict[str, str] = {}
    empty = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        model, sep, kind = folder.name.rpartition("-")
        if not (sep and model and kind.upper() in ("UTT", "FRA")):
            continue
        name = feature_name(model)
        if models.setdefault(name, model) != model:
            raise InputError(f"--mertools {root}: models {models[name]!r} and {model!r} both "
                             f"become feature {name!r}; import one of them with --from")
        with os.scandir(folder) as it:
            if not any(e.name.endswith(".npy") for e in it):
                log.warning("import: %s holds no .npy files; skipped", folder)
                empty.append(folder)
                continue
        found.setdefault(name, []).append(folder)
    if not found:
        raise InputError(f"--mertools {root}: no MERTools feature folder with .npy files in it; "
                         f"expected folders named <model>-UTT or <model>-FRA (e.g. "
                         f"chinese-hubert-large-UTT, clip-vit-large-patch14-FRA) holding one "
                         f"<name>.npy per clip")
    return found, empty
