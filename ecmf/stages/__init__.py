"""The `ecmf` commands: one module per command, each with one entry, `run(cfg, **options) ->
summary` (a dict the CLI prints as JSON, or None). A stage checks its inputs and the config's
registered names before Ray starts (`common`), then calls the libraries below it.

`HELP` names the commands with their one-line help: what the CLI offers and what a job spec's
steps may name, without importing either. `module(name)` is the module of a command.
"""

from __future__ import annotations

HELP = {
    "prepare-demo": "write the demo corpus in MER2025's release layout",
    "enrich": "LLM-enrich every subtitle into enrich/enriched.parquet",
    "extract": "encode every clip into the Parquet feature store (resumable)",
    "import-features": "MERTools feature folders (-UTT/-FRA .npy) into the feature store",
    "export-features": "the feature store as MERTools folders (<feature>-UTT/<name>.npy)",
    "train": "k-fold fusion training (folds in parallel on Ray) into train/",
    "refine": "multi-source label refinement of the labeled set into refine/",
    "pseudo-label": "pseudo-label rounds over the unlabeled pool into rounds/<k>/",
    "tune": "hyperparameter search (Ray Tune, ASHA) into tune/: trials.csv, best.yaml",
    "predict": "fold-ensemble predictions: predict/submission.csv and MERTools' emo_probs npz",
    "evaluate": "cross-validation and test metrics into evaluate/",
    "config": "print the resolved config as YAML, each key with its comment",
    "demo": "run every stage on a generated corpus and print the results table",
    "submit": "submit a job spec (jobs/*.yaml) to a Ray cluster's Jobs API",
    "jobs": "status, logs, stop or list of jobs on a Ray cluster",
}
JOB_COMMANDS = ("submit", "jobs")


def module_name(command: str) -> str:
    """`ecmf.stages.<module>` of a command: its name with '-' as '_' (`pseudo-label` ->
    `pseudo_label`); `ecmf config` is `show_config`, apart from the `ecmf.config` package."""
    return "show_config" if command == "config" else command.replace("-", "_")
