"""Feature extraction with Ray Data: decode as CPU tasks, one actor pool per encoder, Parquet out.

The pool streams through in blocks: no step holds it all. Samples already in the store without
error are skipped, so a re-run resumes; a sample that fails any stage lands in the errors table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ecmf import schema
from ecmf.config import Config, ConfigError, EncoderConfig, FaceEncoderConfig
from ecmf.data.manifest import build_manifest
from ecmf.data.media import MediaError, read_audio, sample_frames_at
from ecmf.errors import MissingInput
from ecmf.features.encoders import ENCODERS, EncoderGroup
from ecmf.features.faces import FACE_DETECTORS
from ecmf.features.sequence import sequence_array, sequence_field
from ecmf.features.store import (
    check_one_row_per_sample,
    compact_store,
    complete_ids,
    error_rows,
    heal_store,
    modality_counts,
    run_stamp,
    status_table,
    store_columns,
)
from ecmf.runtime.capacity import check_placeable, cluster_capacity
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)

INPUT_COLUMNS = (schema.SAMPLE_ID, schema.VIDEO, schema.AUDIO, schema.TEXT, schema.ENRICHED_TEXT)
# Clips per input block, so per decode task: a decoded clip is about 1 MB of frames and audio,
# and a block waits whole in the object store for the encoders. 16 rather than 64 cut the
# growth of peak memory from 200 to 1,000 clips (PSS) from 18% to 12% at the same speed
# (tests/benchmarks/extract.py).
ROWS_PER_BLOCK = 16


def decode_batch(batch: dict[str, np.ndarray], num_frames: int, sample_rate: int,
                 max_audio_s: float, frames: bool, audio: bool,
                 face_short_side: int = 0) -> dict[str, np.ndarray]:
    """Decode frames and audio of each clip, each on its own: a modality that fails is
    recorded in its `_error_<input>` column (the encoders mask it), never raised, and the
    clip's other modalities go on. Audio the wav cannot give comes from the video's track.

    `face_short_side` > 0: the same decode also gives the face detector its frames at that
    short side (`face_frames`), so the face encoder's actor never decodes video itself."""

    n = len(batch[schema.SAMPLE_ID])
    out = {schema.FRAMES: [], schema.FACE_FRAMES: [], "audio": []}
    errs = {schema.FRAMES: [""] * n, schema.FACE_FRAMES: [""] * n, "audio": [""] * n}
    notes = []
    sides = (256, face_short_side) if face_short_side else (256,)
    for i in range(n):
        f = ff = np.zeros((0, 1, 1, 3), np.uint8)
        a = np.zeros(0, np.float32)
        clip_notes: list[str] = []
        video, wav = str(batch[schema.VIDEO][i]), str(batch[schema.AUDIO][i])
        # A text-only row (no media path) lacks frames and sound by nature: masked, no error.
        if (frames or face_short_side) and video:
            try:
                f, *rest = sample_frames_at(video, num_frames, sides, notes=clip_notes)
                ff = rest[0] if rest else ff
            except MediaError as e:
                errs[schema.FRAMES][i] = errs[schema.FACE_FRAMES][i] = f"decode: {e}"
        if audio and (video or wav):
            try:
                a = read_audio(wav, video, sample_rate, max_audio_s, notes=clip_notes)
            except MediaError as e:
                errs["audio"][i] = f"decode: {e}"
        out[schema.FRAMES].append(f)
        out[schema.FACE_FRAMES].append(ff)
        out["audio"].append(a)
        notes.append("; ".join(clip_notes))
    batch = dict(batch)
    for name, wanted in ((schema.FRAMES, frames), (schema.FACE_FRAMES, bool(face_short_side)),
                         ("audio", audio)):
        if wanted:
            batch[name] = _ragged(out[name])
            batch[schema.decode_error_column(name)] = np.array(errs[name], dtype=object)
    batch[schema.NOTES] = np.array(notes, dtype=object)
    batch[schema.ERROR] = np.array([""] * n, dtype=object)
    return batch


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def to_store_rows(batch: dict[str, np.ndarray], features: list[str]) -> pa.Table:
    """Keep sample_id, features (fixed-size lists, dimension in the schema), masks, statuses,
    the sequences encoders emitted (`seq_<name>`, steps and dim in the field metadata), notes
    and error: a clip with no modality read, and some that failed, gets their reasons as its
    error (one whose modalities are all absent by nature is kept, as before)."""

    n = len(batch[schema.SAMPLE_ID])
    fields = [pa.field(schema.SAMPLE_ID, pa.string())]
    arrays = [pa.array(batch[schema.SAMPLE_ID].astype(str))]
    statuses = {}
    for name in features:
        x = np.ascontiguousarray(batch[schema.feature_column(name)], dtype=np.float32)
        # Rows made without an encoder (tests, benchmarks) have no status: nothing failed.
        statuses[name] = [str(v) for v in batch.get(schema.status_column(name), [""] * n)]
        fields += [pa.field(schema.feature_column(name), pa.list_(pa.float32(), x.shape[1])),
                   pa.field(schema.mask_column(name), pa.bool_()),
                   pa.field(schema.status_column(name), pa.string())]
        arrays += [pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
                   pa.array(batch[schema.mask_column(name)].astype(bool)),
                   pa.array(statuses[name], pa.string())]
        seq_col = schema.sequence_column(name)
        if seq_col in batch:
            seq = np.asarray(batch[seq_col], dtype=np.float32)
            fields.append(sequence_field(name, seq.shape[1], seq.shape[2]))
            arrays.append(sequence_array(seq))
    errors = [str(e) for e in batch[schema.ERROR]]
    read = np.zeros(n, dtype=bool)
    for name in features:
        read |= np.asarray(batch[schema.mask_column(name)], dtype=bool)
    for i in np.flatnonzero(~read):
        failed = [f"{f}: {statuses[f][i]}" for f in features if statuses[f][i]]
        if failed and not errors[i]:
            errors[i] = "; ".join(failed)
    notes = batch.get(schema.NOTES, np.full(n, "", dtype=object))
    fields += [pa.field(schema.NOTES, pa.string()), pa.field(schema.ERROR, pa.string())]
    arrays += [pa.array([str(v) for v in notes], pa.string()), pa.array(errors, pa.string())]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _inputs(cfg: Config, wd: Workdir, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    if manifest is None:
        manifest = build_manifest(cfg)
    if wd.enriched.is_file():
        enriched = pd.read_parquet(wd.enriched, columns=[schema.SAMPLE_ID, schema.ENRICHED_TEXT])
        manifest = manifest.merge(enriched, on=schema.SAMPLE_ID, how="left")
    if schema.ENRICHED_TEXT not in manifest:
        manifest[schema.ENRICHED_TEXT] = ""
    manifest[schema.ENRICHED_TEXT] = manifest[schema.ENRICHED_TEXT].fillna("")
    return manifest[list(INPUT_COLUMNS)]


def input_dataset(rows: pd.DataFrame):
    """The clips to extract as a Ray Dataset in blocks of ROWS_PER_BLOCK, built in the driver.

    `ray.data.from_pandas` computes each block's metadata in a remote task: on a fresh cluster
    that task waits for a worker to start and import pandas and Ray Data (2-3 s on 2 cores)
    before execution can begin, and the encoder actors start that much later. `from_items`
    builds the blocks and their metadata here, at about 35 us a row (5 s for a 130,000-clip
    manifest, against hours of extraction).
    """
    import ray

    records = rows.to_dict("records")
    blocks = max(1, -(-len(records) // ROWS_PER_BLOCK))
    return ray.data.from_items(records, override_num_blocks=blocks)


def preflight(cfg: Config) -> pd.DataFrame:
    """What `extract_features` checks before any work, without Ray: the corpus reads (its
    manifest is returned) and the store, if any, holds the configured features."""
    manifest = build_manifest(cfg)
    store = Workdir.of(cfg).store
    heal_store(store)
    check_store_matches(store, cfg.extract.encoders)
    return manifest


def extract_features(cfg: Config, manifest: pd.DataFrame | None = None) -> dict:
    """Run every configured encoder over the corpus into the workdir's feature store.

    `manifest`: the corpus as `preflight` read it (default: read it here).
    """
    import ray

    from ecmf.features.sink import StoreSink

    wd = Workdir.of(cfg)
    ex = cfg.extract
    inputs = _inputs(cfg, wd, manifest)
    needs_enriched = any(e.input == schema.ENRICHED_TEXT for e in ex.encoders.values())
    if needs_enriched and not wd.enriched.is_file():
        raise MissingInput(f"{wd.enriched}: an encoder reads enriched_text; run `ecmf enrich`"
                           " first or drop that encoder from extract.encoders")
    heal_store(wd.store)
    check_store_matches(wd.store, ex.encoders)
    compact_store(wd.store)  # a run killed between writing and compacting left two rows
    done = complete_ids(wd.store)
    todo = inputs[~inputs[schema.SAMPLE_ID].isin(done)].reset_index(drop=True)
    save_config(cfg, wd.features)
    log.info("extract: %d clips, %d already in the store, %d to do", len(inputs),
             len(inputs) - len(todo), len(todo))
    start = time.time()
    if len(todo):
        stages = encoder_stages(ex.encoders)
        check_resources(stages)
        ds = input_dataset(todo)
        inputs_used = {m["input_column"] for stage in stages for m in stage}
        ds = ds.map_batches(
            decode_batch, batch_size=ex.decode_batch_size, batch_format="numpy",
            # Separate CPU tasks that run beside the encoders, never fused into the next pool.
            **_decode_task_args(),
            fn_kwargs=dict(num_frames=ex.num_frames, sample_rate=ex.sample_rate,
                           max_audio_s=ex.max_audio_s, frames=schema.FRAMES in inputs_used,
                           audio="audio" in inputs_used,
                           face_short_side=face_short_side(ex.encoders)))
        for stage in stages:
            if len(stage) == 1:  # its own pool: the encoder's class names the operator
                fn, kwargs = ENCODERS.get(stage[0]["cfg"].name), stage[0]
            else:
                fn, kwargs = EncoderGroup, {"members": stage}
            pool = pool_settings(stage)
            ds = ds.map_batches(
                fn, batch_size=pool["batch_size"], batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=pool["pool_size"]),
                num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"],
                fn_constructor_kwargs=kwargs)
        ds = ds.map_batches(to_store_rows, batch_format="numpy", batch_size=ROWS_PER_BLOCK,
                            fn_kwargs=dict(features=list(ex.encoders)))
        ds.write_datasink(StoreSink(wd.store, run_stamp(), ex.rows_per_file))
        compact_store(wd.store)  # a retried clip's new row replaces its old one
    check_one_row_per_sample(wd.store)
    seconds = time.time() - start
    return _summarise(wd, inputs, done, len(todo), seconds, ex.max_audio_s)


def check_store_matches(store, encoders: dict[str, EncoderConfig]) -> None:
    """Refuse to add rows to a store written with other features or sequences.

    A resumed run appends Parquet files beside the earlier ones; files of differing columns
    would leave some samples without a feature the readers expect (e.g. a store made by
    `ecmf import-features`, or one extracted before `sequence_steps` was set).
    """

    if not any(Path(store).glob("*.parquet")):
        return
    have = store_columns(store)
    want = {"features": set(encoders),
            "sequences": {n for n, e in encoders.items() if e.sequence_steps}}
    if have != want:
        raise ConfigError(
            f"feature store {store} holds features {sorted(have['features'])} and sequences "
            f"{sorted(have['sequences'])}, but extract.encoders would write features "
            f"{sorted(want['features'])} and sequences {sorted(want['sequences'])}: extract "
            f"into another workdir, or remove {store} to extract every clip again")


def _decode_task_args() -> dict:
    """What a decode task asks of Ray: one CPU, and the memory it holds (FFmpeg, numpy and a
    batch of decoded clips), which Ray counts when it places tasks but does not enforce.

    The memory keeps decoding out of the encoders' actors. Ray Data fuses a task map into the
    next actor map when their remote args match (Ray 2.60, ray/data/_internal/logical/rules/
    operator_fusion.py: `_can_fuse` -> `are_op_remote_args_compatible` ->
    `are_remote_args_compatible`, which compares num_cpus, num_gpus, resources and every other
    arg, inheriting only scheduling_strategy and label_selector). A CPU encoder asking one CPU
    would then decode in its own actor, in turn with encoding. No encoder pool asks memory, so
    the args never match. (`ray_remote_args_fn`, which the rule never fuses either, is
    deprecated and goes in Ray 2.64.)
    """
    # A decode worker with its imports holds about 200 MB; a batch of 16 MER2025 clips
    # (8 frames and up to a minute of 16 kHz audio each) adds up to about 100 MB.
    return {"num_cpus": 1, "memory": 512 * 1024**2}


def encoder_stages(encoders: dict[str, EncoderConfig]) -> list[list[dict]]:
    """The encoders' actor pools in run order, each a list of its members' constructor
    arguments: an encoder alone, or a `group` together at its first member's place.

    The last member to read an input column drops it (decoded frames and audio are the bulk
    of a block, and carrying them on would fill the object store).
    """

    stages: list[list[str]] = []
    where: dict[str, int] = {}
    for name, enc in encoders.items():
        if enc.group and enc.group in where:
            stages[where[enc.group]].append(name)
            continue
        if enc.group:
            where[enc.group] = len(stages)
        stages.append([name])
    used = {n: input_column(e) for n, e in encoders.items()}
    last_user = {used[n]: n for stage in stages for n in stage}  # run order: the last one wins
    return [[{"feature": n, "cfg": encoders[n], "input_column": used[n],
              "drop_input": last_user[used[n]] == n} for n in stage] for stage in stages]


def input_column(enc: EncoderConfig) -> str:
    """The decoded column an encoder reads: its `input`, else its class's default; a face
    encoder whose detector reads pixels at `detect_short_side` reads the face frames decoded
    at that size (`decode_batch`)."""
    if enc.input:
        return enc.input
    if isinstance(enc, FaceEncoderConfig) and enc.detect_short_side \
            and FACE_DETECTORS.get(enc.detector).reads_frames:
        return schema.FACE_FRAMES
    return ENCODERS.get(enc.name).default_input


def face_short_side(encoders: dict[str, EncoderConfig]) -> int:
    """The short side the decode tasks give the face frames at (0: no encoder reads them)."""
    return max((e.detect_short_side for e in encoders.values()
                if input_column(e) == schema.FACE_FRAMES), default=0)


def pool_settings(stage: list[dict]) -> dict:
    """One actor pool's settings from its members' configs (see EncoderConfig.group)."""
    encs = [m["cfg"] for m in stage]
    return {"batch_size": min(e.batch_size for e in encs), "pool_size": encs[0].pool_size,
            "num_cpus": max(e.num_cpus for e in encs), "num_gpus": max(e.num_gpus for e in encs)}


def check_resources(stages: list[list[dict]], capacity=None) -> None:
    """Fail fast when an encoder pool asks for what no node can ever give (a GPU on a machine
    without one would wait forever, showing "pending: 1 GPU"), or when the pools would hold
    every CPU the cluster can reach: decode and write tasks would then wait forever for a CPU
    while the actors wait for their input, and Ray Data would stall without an error.
    Counted against what the cluster can scale to (`capacity`, by default the connected
    cluster's: ecmf.runtime.capacity), not what is up now."""

    capacity = capacity or cluster_capacity()
    requests = {}
    for stage in stages:
        pool = pool_settings(stage)
        key = ("extract.encoders." + stage[0]["feature"] if len(stage) == 1 else
               f"extract.encoders group {stage[0]['cfg'].group!r}")
        requests[key] = {"CPU": pool["num_cpus"], "GPU": pool["num_gpus"]}
    check_placeable(requests, capacity)
    if not capacity.known:
        return
    total = capacity.totals.get("CPU", 0.0)
    held = sum(p["num_cpus"] * p["pool_size"] for p in map(pool_settings, stages))
    if total - held < 1.0:
        raise ConfigError(
            f"extract.encoders hold {held:g} of the {total:g} CPUs the cluster can reach "
            f"(num_cpus x pool_size per encoder or group), leaving less than 1 for decoding and "
            f"writing: lower extract.encoders.<name>.num_cpus or pool_size, or give Ray more "
            f"CPUs (ray.num_cpus for the embedded one)")


def _summarise(wd: Workdir, inputs: pd.DataFrame, skipped: set, attempted: int,
               seconds: float, max_audio_s: float) -> dict:
    table = status_table(wd.store, extra=(schema.NOTES,), masks=True)
    table = table[table[schema.SAMPLE_ID].isin(inputs[schema.SAMPLE_ID])].fillna("")
    errors = error_rows(table)
    errors.to_parquet(wd.errors, index=False)
    failed = table[schema.ERROR] != ""
    features = modality_counts(table)
    some_failed = pd.Series(False, index=table.index)
    for c in (c for c in table.columns if c.startswith(schema.STATUS_PREFIX)):
        some_failed |= table[c] != ""
    notes = table.get(schema.NOTES, pd.Series("", index=table.index)).astype(str)
    cut = int(notes.str.contains("audio cut at").sum())
    if cut:
        log.warning("extract: %d clip(s) had audio longer than extract.max_audio_s = %g s and "
                    "were cut to it (their `notes` in the store say by how much)", cut,
                    max_audio_s)
    summary = {
        "clips": int(len(inputs)),
        "done": int((~failed).sum()),
        "with_failed_modality": int((~failed & some_failed).sum()),
        "skipped": int(len(skipped)),
        "failed": int(failed.sum()),
        "not_stored": int(len(inputs) - len(table)),
        "attempted": int(attempted),
        "features": features,
        "audio_cut": cut,
        "audio_from_video": int(notes.str.contains("video's track").sum()),
        "seconds": round(seconds, 2),
        "clips_per_s": round(attempted / seconds, 2) if attempted and seconds > 0 else None,
        "store": str(wd.store),
        "errors": str(wd.errors),
    }
    write_json(wd.features / "summary.json", summary)
    return summary
