"""Corpus layouts by name (`corpus.layout`): each reads the corpus a config names into the manifest
(sample_id, video_path, audio_path, text, label, split) that every stage starts from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ecmf.data.csv_manifest import read_csv_manifest
from ecmf.data.mer2025 import read_mer2025
from ecmf.errors import InputError
from ecmf.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from ecmf.config import CorpusConfig

LAYOUTS: Registry[Callable[[CorpusConfig], pd.DataFrame]] = Registry("corpus layout")


@LAYOUTS.register("mer2025")
def _mer2025(corpus: CorpusConfig) -> pd.DataFrame:
    if not corpus.root:
        raise InputError("config corpus.root is empty: point it at a MER2025-layout directory "
                         "(e.g. --set corpus.root=demo-out/corpus)")
    return read_mer2025(corpus.root, corpus.text_column, corpus.encoding)


@LAYOUTS.register("csv")
def _csv(corpus: CorpusConfig) -> pd.DataFrame:
    if not corpus.manifest:
        raise InputError("config corpus.manifest is empty: layout 'csv' reads a CSV with columns "
                         "path[,text,label,name,split,audio_path] (--set corpus.manifest=FILE)")
    return read_csv_manifest(corpus.manifest, corpus.encoding, labels=None)


def read_corpus(corpus: CorpusConfig) -> pd.DataFrame:
    """The manifest of the corpus `corpus` names, read by its layout's reader."""
    return LAYOUTS.get(corpus.layout)(corpus)
