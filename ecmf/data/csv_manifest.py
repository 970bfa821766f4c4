"""Reader for a generic CSV manifest (`corpus.layout: csv`): one row per clip, any corpus.

Columns: `path` (video, or an audio-only file) and/or `text`, optional `label` (any class
names: the run's label set is resolved from them, `ecmf.data.manifest.corpus_labels`),
`name` (sample id, default: the file's stem; required for a text-only row), `split`
(train/candidate/pool; default train when labeled, else pool) and `audio_path`. A row without
`path` is text only: its frame and audio features are masked as absent. Relative paths resolve
against the CSV's folder.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pandas as pd

from ecmf import schema
from ecmf.errors import InputError, MissingInput

log = logging.getLogger(__name__)

COLUMNS = ("path", "text", "label", "name", "split", "audio_path")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


# Tried, in order, to suggest an encoding when a CSV is not the one configured.
LIKELY_ENCODINGS = ("utf-8", "gbk", "gb18030", "big5", "shift_jis", "cp1252")


def decode_text(path: Path, encoding: str) -> str:
    """The file's text; bytes that are not `encoding` fail naming the file, every bad line and
    an encoding that reads the whole file."""
    raw = path.read_bytes()
    if encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # a BOM from Excel is not part of the first column's name
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        pass
    bad = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode(encoding)
        except UnicodeDecodeError as e:
            bad.append((n, e))
    n, first = bad[0]
    lines = ", ".join(str(b[0]) for b in bad[:10]) + (", ..." if len(bad) > 10 else "")
    name = encoding.removesuffix("-sig")
    fits = [e for e in LIKELY_ENCODINGS if e != name and _decodes(raw, e)]
    # Guessing silently would embed mojibake as subtitles: name a candidate, the user decides.
    hint = (f"the whole file reads as {fits[0]}: try --set corpus.encoding={fits[0]}" if fits
            else "name its encoding with --set corpus.encoding=...")
    raise InputError(
        f"{path}: {len(bad)} line(s) are not valid {name} (line(s) {lines}; line {n}: byte "
        f"{first.object[first.start:first.start + 1]!r} at column {first.start + 1}); {hint}, "
        f"or save the file as UTF-8")


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header (lower-cased) and (line number, row) pairs; quoted fields may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise InputError(f"{path}: empty file; expected a header with columns "
                         f"{list(COLUMNS)} ('path' and/or 'text' required)") from None
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise InputError(f"{path}: column(s) {dup} appear more than once in the header")
    if "path" not in header and "text" not in header:
        raise InputError(f"{path}: missing column 'path' (or 'text' for a text-only corpus); "
                         f"found {header}, expected 'path' and/or 'text', and optionally "
                         f"{list(COLUMNS[2:])}")
    extra = [h for h in header if h not in COLUMNS]
    if extra:
        log.warning("%s: ignoring column(s) %s; known: %s", path, extra, list(COLUMNS))
    rows = []
    line = reader.line_num + 1
    for values in reader:
        if values and any(v.strip() for v in values):
            if len(values) != len(header):
                raise InputError(f"{path} line {line}: {len(values)} field(s), the header has "
                                 f"{len(header)} ({header})")
            rows.append((line, dict(zip(header, values))))
        line = reader.line_num + 1
    if not rows:
        raise InputError(f"{path}: no rows under the header")
    return header, rows


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def read_csv_manifest(path: str | Path, encoding: str = "utf-8",
                      labels: tuple[str, ...] | None = schema.LABELS) -> pd.DataFrame:
    """Manifest (sample_id, video_path, audio_path, text, label, split) of the clips a CSV lists.

    Every problem of a row fails naming the file, its line and the sample; a manifest whose
    paths all miss is an error too (most likely a wrong folder), while a few missing files are
    logged and left to extraction, which records them in its errors table. `labels`: the
    allowed class names (None: any).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"corpus manifest {path} does not exist (config corpus.manifest)")
    _, rows = _rows(path, decode_text(path, encoding))
    base = path.resolve().parent
    seen: dict[str, int] = {}
    out = []
    for line, r in rows:
        where = f"{path} line {line}"
        media = r.get("path", "").strip()
        text = r.get("text", "")
        if not media and not text.strip():
            raise InputError(f"{where}: empty 'path' and 'text'; each row names a video or "
                             f"audio file, or holds a text")
        media = _resolve(base, media) if media else ""
        name = r.get("name", "").strip() or Path(media).stem
        if not name:
            raise InputError(f"{where}: a text-only row needs a 'name' (its sample id)")
        if "/" in name or "\\" in name:
            raise InputError(f"{where}: name {name!r} holds a path separator; names become "
                             f"file names (<name>.npy), so use a plain id")
        if name in seen:
            raise InputError(f"{where}: sample {name!r} is listed again (first on line "
                             f"{seen[name]}); names (default: the file stem) must be unique")
        seen[name] = line
        label = r.get("label", "").strip() or None
        if label is not None and labels is not None and label not in labels:
            raise InputError(f"{where}: sample {name!r} has label {label!r}; expected one of "
                             f"{list(labels)} or an empty cell")
        split = r.get("split", "").strip().lower() or ("train" if label else "pool")
        if split not in schema.SPLITS:
            raise InputError(f"{where}: sample {name!r} has split {split!r}; expected one of "
                             f"{list(schema.SPLITS)} or an empty cell")
        if split == "train" and label is None:
            raise InputError(f"{where}: sample {name!r} is in split 'train' without a label")
        if split != "train" and label is not None:
            raise InputError(f"{where}: sample {name!r} has a label but split {split!r}; only "
                             f"train rows carry labels (a candidate's truth stays out of the "
                             f"manifest)")
        audio = r.get("audio_path", "").strip()
        audio = _resolve(base, audio) if audio else ""
        video = media
        if media and Path(media).suffix.lower() in AUDIO_SUFFIXES:
            if audio and audio != media:
                raise InputError(f"{where}: sample {name!r}: 'path' is an audio file and "
                                 f"'audio_path' names another one; give one of them")
            video, audio = "", media
        out.append((name, video, audio, text, label, split))
    df = pd.DataFrame(out, columns=[schema.SAMPLE_ID, schema.VIDEO, schema.AUDIO, schema.TEXT,
                                    schema.LABEL, schema.SPLIT])
    _check_files(path, df)
    return df


def _check_files(path: Path, df: pd.DataFrame) -> None:
    media = [(s, v or a) for s, v, a in zip(df[schema.SAMPLE_ID], df[schema.VIDEO],
                                            df[schema.AUDIO]) if v or a]
    missing = [(s, m) for s, m in media if not Path(m).is_file()]
    if missing and len(missing) == len(media):
        raise MissingInput(
            f"{path}: none of its {len(media)} files exist, e.g. {missing[0][1]} (sample "
            f"{missing[0][0]!r}); relative paths resolve against the CSV's folder")
    if missing:
        log.warning("%s: %d of %d files do not exist, e.g. %s (sample %r); extraction will list "
                    "them in its errors table", path, len(missing), len(media), missing[0][1],
                    missing[0][0])
