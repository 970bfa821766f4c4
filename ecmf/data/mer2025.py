"""Reader for MER2025's release layout: one manifest row per clip, keyed by `sample_id`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ecmf import schema
from ecmf.data.csv_manifest import decode_text
from ecmf.errors import InputError, MissingInput

SUBTITLES = "subtitle_chieng.csv"
TRAIN_LABELS = "track1_train_disdim.csv"
CANDIDATES = "track_all_candidates.csv"
MANIFEST_COLUMNS = [schema.SAMPLE_ID, schema.VIDEO, schema.AUDIO, schema.TEXT, schema.LABEL,
                    schema.SPLIT]


def _read_csv(path: Path, required: list[str], encoding: str = "utf-8") -> pd.DataFrame:
    import io

    if not path.is_file():
        raise MissingInput(f"{path}: missing; MER2025's release layout has this file")
    # Subtitles may be missing for a clip: keep empty strings rather than NaN.
    df = pd.read_csv(io.StringIO(decode_text(path, encoding)), dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(df.columns)}, "
                         f"expected {required}")
    dup = df["name"][df["name"].duplicated()].tolist()
    if dup:
        raise InputError(f"{path}: duplicated name(s) {dup[:5]}; each clip must appear once")
    return df


def read_mer2025(root: str | Path, text_column: str = "english",
                 encoding: str = "utf-8") -> pd.DataFrame:
    """Manifest of every clip under `root`: the pool is every video, audio file or listed name.
    Its CSVs are read as `encoding` (corpus.encoding).

    split is "train" for clips with a label in track1_train_disdim.csv, "candidate" for the
    names a submission must cover, "pool" for the remaining unlabeled clips.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"corpus root {root} is not a directory")
    subs = _read_csv(root / SUBTITLES, ["name", text_column], encoding)
    labels = _read_csv(root / TRAIN_LABELS, ["name", "discrete"], encoding)
    cands = _read_csv(root / CANDIDATES, ["name"], encoding)

    bad = labels[~labels["discrete"].isin(schema.LABELS)]
    if len(bad):
        row = bad.index[0] + 2  # 1-based, after the header
        raise InputError(
            f"{root / TRAIN_LABELS} line {row}: sample {bad['name'].iloc[0]!r} has label "
            f"{bad['discrete'].iloc[0]!r}; expected one of {list(schema.LABELS)}")
    both = sorted(set(labels["name"]) & set(cands["name"]))
    if both:
        raise InputError(f"{root}: {len(both)} clip(s) are both labeled and candidates, "
                         f"e.g. {both[:3]}; a candidate must be unlabeled")

    videos = {p.stem: p for p in (root / "video").glob("*") if p.is_file()}
    audios = {p.stem: p for p in (root / "audio").glob("*.wav")}
    names = sorted(set(videos) | set(audios) | set(subs["name"]) | set(labels["name"])
                   | set(cands["name"]))
    text = dict(zip(subs["name"], subs[text_column]))
    label = dict(zip(labels["name"], labels["discrete"]))
    cand = set(cands["name"])
    df = pd.DataFrame({
        schema.SAMPLE_ID: names,
        # A clip of the release without its mp4 keeps the path it should have: extraction
        # records it as unreadable, naming the file (an empty path means text only by design).
        schema.VIDEO: [str(videos.get(n, root / "video" / f"{n}.mp4")) for n in names],
        schema.AUDIO: [str(audios[n]) if n in audios else "" for n in names],
        schema.TEXT: [text.get(n, "") for n in names],
        schema.LABEL: [label.get(n) for n in names],
        schema.SPLIT: ["train" if n in label else "candidate" if n in cand else "pool"
                       for n in names],
    })
    return df[MANIFEST_COLUMNS]


def candidate_names(root: str | Path, encoding: str = "utf-8") -> list[str]:
    """The names a submission must cover, in the release file's order."""
    return _read_csv(Path(root) / CANDIDATES, ["name"], encoding)["name"].tolist()
