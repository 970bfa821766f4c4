"""Generic CSV manifest reader and the layout registry: defaults, path resolution, and errors that
name the file, the line and the sample."""

from __future__ import annotations

import pandas as pd
import pytest

from ecmf import schema
from ecmf.config import ConfigError
from ecmf.data.csv_manifest import read_csv_manifest
from ecmf.data.manifest import build_manifest
from ecmf.stages.common import load_config


def _media(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _csv(path, text: str, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_defaults_paths_and_splits(tmp_path):
    _media(tmp_path / "corpus", "clips/a.mp4", "clips/b.mp4", "wav/c.wav", "wav/a.wav",
           "clips/d.avi")
    csv = _csv(tmp_path / "corpus" / "list.csv",
               "path,text,label,name,split,audio_path\n"
               "clips/a.mp4,hello,happy,,,wav/a.wav\n"
               'clips/b.mp4,"two\nlines",,,,\n'
               f"{tmp_path / 'corpus' / 'wav' / 'c.wav'},,,,candidate,\n"
               "clips/d.avi,你好,,clip_d,pool,\n")
    m = read_csv_manifest(csv).set_index(schema.SAMPLE_ID)
    assert list(m.index) == ["a", "b", "c", "clip_d"]
    assert m[schema.SPLIT].to_dict() == {"a": "train", "b": "pool", "c": "candidate",
                                         "clip_d": "pool"}
    base = tmp_path / "corpus"
    assert m.loc["a", schema.VIDEO] == str(base / "clips" / "a.mp4")
    assert m.loc["a", schema.AUDIO] == str(base / "wav" / "a.wav")
    # An audio-only file is the audio, and there is no video.
    assert m.loc["c", schema.VIDEO] == "" and m.loc["c", schema.AUDIO] == str(base / "wav/c.wav")
    assert m.loc["b", schema.TEXT] == "two\nlines" and m.loc["clip_d", schema.TEXT] == "你好"
    assert m.loc["a", schema.LABEL] == "happy" and pd.isna(m.loc["b", schema.LABEL])
    assert list(read_csv_manifest(csv).columns) == [schema.SAMPLE_ID, schema.VIDEO, schema.AUDIO,
                                                    schema.TEXT, schema.LABEL, schema.SPLIT]


def test_only_path_is_required_and_headers_ignore_case(tmp_path):
    _media(tmp_path, "x.mp4")
    m = read_csv_manifest(_csv(tmp_path / "m.csv", "\ufeffPath ,Label\nx.mp4,sad\n"))
    assert m[schema.SAMPLE_ID].tolist() == ["x"] and m[schema.LABEL].tolist() == ["sad"]
    assert m[schema.TEXT].tolist() == [""] and m[schema.SPLIT].tolist() == ["train"]


@pytest.mark.parametrize("rows, match", [
    ("a.mp4,,\nsub/a.mp4,,\n", r"line 3: sample 'a' is listed again \(first on line 2\)"),
    ("a.mp4,joyful,\n", r"line 2: sample 'a' has label 'joyful'; expected one of \['neutral'"),
    ("a.mp4,,test\n", r"line 2: sample 'a' has split 'test'; expected one of"),
    ("a.mp4,,train\n", r"line 2: sample 'a' is in split 'train' without a label"),
    ("a.mp4,sad,candidate\n", r"line 2: sample 'a' has a label but split 'candidate'"),
    ("a.mp4,,\n,,\n", None),  # a blank line is skipped
    ("a.mp4,,\n ,sad,\n", r"line 3: empty 'path'"),
    ("a.mp4,,,extra\n", r"line 2: 4 field\(s\), the header has 3"),
])
def test_row_errors_name_file_line_and_sample(tmp_path, rows, match):
    _media(tmp_path, "a.mp4", "sub/a.mp4")
    csv = _csv(tmp_path / "m.csv", "path,label,split\n" + rows)
    if match is None:
        assert len(read_csv_manifest(csv)) == 1
        return
    with pytest.raises(ValueError, match=match) as e:
        read_csv_manifest(csv)
    assert str(csv) in str(e.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus.manifest"):
        read_csv_manifest(tmp_path / "nope.csv")
    with pytest.raises(ValueError,
                       match=r"missing column 'path' \(or 'text' .*\); found \['file', 'label'\]"):
        read_csv_manifest(_csv(tmp_path / "a.csv", "file,label\nx.mp4,sad\n"))
    with pytest.raises(ValueError, match="empty file"):
        read_csv_manifest(_csv(tmp_path / "b.csv", ""))
    with pytest.raises(ValueError, match="no rows under the header"):
        read_csv_manifest(_csv(tmp_path / "c.csv", "path,text\n"))
    # Every path missing: most likely the wrong folder, so the manifest is refused.
    with pytest.raises(FileNotFoundError, match=r"none of its 2 files exist.*CSV's folder"):
        read_csv_manifest(_csv(tmp_path / "d.csv", "path\nx.mp4\ny.mp4\n"))


def test_a_missing_file_is_left_to_extraction(tmp_path, caplog):
    _media(tmp_path, "x.mp4")
    m = read_csv_manifest(_csv(tmp_path / "m.csv", "path\nx.mp4\ny.mp4\n"))
    assert m[schema.SAMPLE_ID].tolist() == ["x", "y"]
    assert "1 of 2 files do not exist" in caplog.text and "y.mp4" in caplog.text


def test_not_utf8_names_the_lines_and_the_way_out(tmp_path):
    _media(tmp_path, "a.mp4", "b.mp4", "c.mp4")
    text = "path,text\na.mp4,fine\nb.mp4,你好\nc.mp4,再见\n"
    csv = _csv(tmp_path / "gbk.csv", text, encoding="gbk")
    with pytest.raises(ValueError, match=r"gbk\.csv: 2 line\(s\) are not valid utf-8 \(line\(s\) "
                                         r"3, 4; .*reads as gbk: try --set corpus\.encoding=gbk"):
        read_csv_manifest(csv)
    m = read_csv_manifest(csv, encoding="gbk")
    assert m[schema.TEXT].tolist() == ["fine", "你好", "再见"]


def test_layout_registry_dispatch_and_config_errors(tmp_path):
    _media(tmp_path, "a.mp4")
    csv = _csv(tmp_path / "m.csv", "path,label\na.mp4,angry\n")
    cfg = load_config(None, [f"workdir={tmp_path / 'run'}", "corpus.layout=csv",
                             f"corpus.manifest={csv}"])
    m = build_manifest(cfg)
    assert m[schema.SAMPLE_ID].tolist() == ["a"]
    assert (tmp_path / "run" / "manifest.parquet").is_file()
    with pytest.raises(ConfigError, match=r"corpus.layout: expected one of \['csv', 'mer2025'\], "
                                          r"got 'kaldi'"):
        load_config(None, ["corpus.layout=kaldi"])
    with pytest.raises(ConfigError, match="corpus.encoding"):
        load_config(None, ["corpus.encoding=klingon"])
    with pytest.raises(ValueError, match="corpus.manifest is empty"):
        build_manifest(load_config(None, [f"workdir={tmp_path}", "corpus.layout=csv"]))
    with pytest.raises(ValueError, match="corpus.root is empty"):
        build_manifest(load_config(None, [f"workdir={tmp_path}"]))


@pytest.mark.ray
def test_a_csv_corpus_goes_through_ecmf_extract(tmp_path, tiny_corpus, ray_local, capsys):
    """Relative paths, an audio-only row and a missing file, through the real CLI; the summary
    is printed at the end. Audio and text share one actor pool (an encoder group)."""
    import json
    import shutil

    from ecmf.cli import main
    from ecmf.data.mer2025 import read_mer2025
    from ecmf.features.store import read_features
    from ecmf.models.tiny import build_tiny_hubert

    m = read_mer2025(tiny_corpus).iloc[:5]
    shutil.copytree(tiny_corpus / "video", tmp_path / "data" / "video")
    shutil.copytree(tiny_corpus / "audio", tmp_path / "data" / "audio")
    rows = [f"video/{n}.mp4,{t}" for n, t in zip(m[schema.SAMPLE_ID][:3], m[schema.TEXT][:3])]
    rows += [f"audio/{m[schema.SAMPLE_ID].iloc[3]}.wav,only audio", "video/gone.mp4,lost"]
    csv = _csv(tmp_path / "data" / "list.csv", "path,text\n" + "\n".join(rows) + "\n")
    hubert = build_tiny_hubert(tmp_path / "hubert")
    sets = [f"workdir={tmp_path / 'run'}", "corpus.layout=csv", f"corpus.manifest={csv}",
            "extract.encoders.frames=null", "extract.encoders.faces=null",
            "extract.encoders.text.num_cpus=0.5", f"extract.encoders.audio.model={hubert}",
            "extract.encoders.audio.num_cpus=0.5", "extract.encoders.audio.num_gpus=0",
            "extract.encoders.audio.group=light", "extract.encoders.text.group=light"]
    capsys.readouterr()
    assert main(["extract", *[a for s in sets for a in ("--set", s)]]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    # The clip whose file is gone keeps its text: only its audio failed.
    assert summary["done"] == 5 and summary["failed"] == 0
    assert summary["with_failed_modality"] == 1
    assert summary["features"]["audio"]["failed"] == 1
    assert ("ecmf extract: 5 of 5 clips in the store, 0 skipped as already done, 0 failed, "
            "1 with a modality that failed") in err
    ft = read_features(tmp_path / "run" / "features" / "store")
    assert sorted(ft.ids) == sorted([*m[schema.SAMPLE_ID][:4], "gone"]) and ft.masks["text"].all()
    import pandas as pd

    errors = pd.read_parquet(tmp_path / "run" / "features" / "errors.parquet")
    assert errors[["sample_id", "feature", "stage"]].values.tolist() == [["gone", "audio",
                                                                         "decode"]]
    assert "gone.mp4" in errors["reason"].iloc[0]
    truth = pd.read_csv(tiny_corpus / "hidden_truth.csv", dtype=str).set_index("name")
    have = ft.ids != "gone"
    silent = (truth.loc[ft.ids[have], "silent"].str.lower() == "true").to_numpy()
    assert set(ft.feats) == {"audio", "text"} and (ft.masks["audio"][have] == ~silent).all()
    assert not ft.masks["audio"][~have].any()


def test_extract_refuses_a_bad_manifest_before_starting_ray(tmp_path, monkeypatch, capsys):
    import contextlib

    import ecmf.runtime.session
    from ecmf.cli import main

    @contextlib.contextmanager
    def no_ray(cfg):
        raise AssertionError("Ray was started before the manifest was read")
        yield

    monkeypatch.setattr(ecmf.runtime.session, "ray_session", no_ray)
    bad = _csv(tmp_path / "m.csv", "file,label\nx.mp4,sad\n")
    sets = [f"workdir={tmp_path / 'run'}", "corpus.layout=csv", f"corpus.manifest={bad}"]
    assert main(["extract", *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert "ecmf extract: error:" in err and "missing column 'path'" in err and str(bad) in err


def test_text_only_rows_and_any_label_set(tmp_path):
    """A corpus of transcripts (MELD-like): no media path, a name per row, its own classes."""
    p = _csv(tmp_path / "a.csv", "name,text,label,split\n"
                        "dia1_utt0,Oh my God!,surprise,train\n"
                        "dia1_utt1,\"Yeah, sure.\",joy,train\n"
                        "dia2_utt0,I'm fine.,,pool\n"
                        "dia3_utt0,Whatever.,,candidate\n")
    df = read_csv_manifest(p, labels=None)
    assert df[schema.VIDEO].tolist() == [""] * 4 and df[schema.AUDIO].tolist() == [""] * 4
    assert df[schema.TEXT].tolist()[:2] == ["Oh my God!", "Yeah, sure."]
    assert df[schema.LABEL].tolist()[:2] == ["surprise", "joy"]
    # The default label check is MER2025's six; the csv layout reads any (labels=None).
    with pytest.raises(ValueError, match="label 'joy'"):
        read_csv_manifest(p)
    with pytest.raises(ValueError, match="line 2: a text-only row needs a 'name'"):
        read_csv_manifest(_csv(tmp_path / "b.csv", "text,label\nhello,joy\n"), labels=None)
    with pytest.raises(ValueError, match="line 2: empty 'path' and 'text'"):
        read_csv_manifest(_csv(tmp_path / "c.csv", "name,path,text\nx,,\n"), labels=None)


def test_a_text_only_row_lacks_frames_and_sound_by_nature():
    import numpy as np

    from ecmf.features.extract import decode_batch

    batch = {schema.SAMPLE_ID: np.array(["a"]), schema.VIDEO: np.array([""], dtype=object),
             schema.AUDIO: np.array([""], dtype=object), schema.TEXT: np.array(["hi"])}
    out = decode_batch(batch, num_frames=4, sample_rate=16000, max_audio_s=5.0, frames=True,
                       audio=True)
    assert out[schema.decode_error_column("frames")].tolist() == [""]
    assert out[schema.decode_error_column("audio")].tolist() == [""]
    assert out["frames"].shape[0] == 1 and out["frames"][0].shape[0] == 0
    assert out["audio"][0].size == 0
