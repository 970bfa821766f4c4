"""MER2025 release-layout reader: splits, text column, and errors that name file and sample."""

from __future__ import annotations

import pandas as pd
import pytest

from ecmf import schema
from ecmf.data.mer2025 import read_mer2025


def _corpus(root, labels=None):
    (root / "video").mkdir(parents=True)
    (root / "audio").mkdir()
    names = ["a", "b", "c", "d"]
    for n in names:
        (root / "video" / f"{n}.mp4").write_bytes(b"x")
    (root / "audio" / "a.wav").write_bytes(b"x")
    pd.DataFrame({"name": names, "chinese": ["你好", "", "", ""],
                  "english": ["hello", "", "bye", ""]}).to_csv(root / "subtitle_chieng.csv",
                                                               index=False)
    pd.DataFrame(labels or {"name": ["a", "b"], "discrete": ["happy", "sad"],
                            "valence": [2, -2]}).to_csv(root / "track1_train_disdim.csv",
                                                        index=False)
    pd.DataFrame({"name": ["c"]}).to_csv(root / "track_all_candidates.csv", index=False)
    return root


def test_manifest_splits_paths_and_text(tmp_path):
    m = read_mer2025(_corpus(tmp_path)).set_index(schema.SAMPLE_ID)
    assert m[schema.SPLIT].to_dict() == {"a": "train", "b": "train", "c": "candidate", "d": "pool"}
    assert m.loc["a", schema.AUDIO].endswith("a.wav") and m.loc["b", schema.AUDIO] == ""
    assert m.loc["c", schema.TEXT] == "bye" and m.loc["b", schema.TEXT] == ""
    assert m.loc["a", schema.LABEL] == "happy" and pd.isna(m.loc["d", schema.LABEL])
    zh = read_mer2025(tmp_path, "chinese").set_index(schema.SAMPLE_ID)
    assert zh.loc["a", schema.TEXT] == "你好"


def test_unknown_label_names_file_line_and_sample(tmp_path):
    _corpus(tmp_path, {"name": ["a", "b"], "discrete": ["happy", "joyful"], "valence": [1, 1]})
    with pytest.raises(ValueError, match=r"track1_train_disdim\.csv line 3: sample 'b'.*joyful"):
        read_mer2025(tmp_path)


def test_missing_file_and_column_are_named(tmp_path):
    _corpus(tmp_path)
    (tmp_path / "track_all_candidates.csv").unlink()
    with pytest.raises(FileNotFoundError, match="track_all_candidates.csv"):
        read_mer2025(tmp_path)
    pd.DataFrame({"nom": ["c"]}).to_csv(tmp_path / "track_all_candidates.csv", index=False)
    with pytest.raises(ValueError, match="missing column"):
        read_mer2025(tmp_path)


def test_labeled_candidate_is_rejected(tmp_path):
    _corpus(tmp_path)
    pd.DataFrame({"name": ["a"]}).to_csv(tmp_path / "track_all_candidates.csv", index=False)
    with pytest.raises(ValueError, match="both labeled and candidates"):
        read_mer2025(tmp_path)


def test_gbk_subtitles_read_with_corpus_encoding_and_fail_clearly_without(tmp_path):
    _corpus(tmp_path)
    subs = tmp_path / "subtitle_chieng.csv"
    pd.DataFrame({"name": ["a", "b", "c", "d"], "chinese": ["", "", "", "你好吗"],
                  "english": ["", "", "", "how are you"]}).to_csv(subs, index=False,
                                                                   encoding="gbk")
    with pytest.raises(ValueError) as e:
        read_mer2025(tmp_path, "chinese")
    message = str(e.value)
    # The file, the line (header is line 1, d is line 5), and an encoding that reads it.
    assert str(subs) in message and "line 5" in message and "not valid utf-8" in message
    assert "--set corpus.encoding=gbk" in message
    zh = read_mer2025(tmp_path, "chinese", encoding="gbk").set_index(schema.SAMPLE_ID)
    assert zh.loc["d", schema.TEXT] == "你好吗"
