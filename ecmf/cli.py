"""The `ecmf` command: parse the line, load the config, call the command's stage (`ecmf.stages`)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from ecmf import __version__
from ecmf.config import Config
from ecmf.errors import UserError
from ecmf.runtime.jobs import JobFailed
from ecmf.stages import HELP, JOB_COMMANDS, module_name
from ecmf.stages.common import load_config
from ecmf.tune.report import apply_best

# The options each command's `run` takes beyond the config, from its parsed arguments.
OPTIONS = {
    "prepare-demo": lambda a: {"out": a.out},
    "import-features": lambda a: {"sources": a.sources, "steps": a.steps,
                                  "overwrite": a.overwrite, "mertools": a.mertools},
    "export-features": lambda a: {"out": a.out, "features": a.features,
                                  "overwrite": a.overwrite},
    "train": lambda a: {"resume": a.resume},
    "tune": lambda a: {"resume": a.resume},
    "predict": lambda a: {"run_dir": a.run},
    "evaluate": lambda a: {"truth": a.truth},
    "demo": lambda a: {"out": a.out, "config_path": a.config, "sets": a.set},
    "submit": lambda a: {"job": a.job, "sets": a.set, "env": a.env, "address": a.address,
                         "submission_id": a.submission_id, "dry_run": a.dry_run,
                         "follow": a.follow, "timeout": a.timeout},
    "jobs": lambda a: {"action": a.action, "job_id": a.id, "address": a.address,
                       "follow": a.follow, "timeout": a.timeout, "tail": a.tail},
}
# Commands whose `run` takes no config: the demo builds its own, jobs talk to a cluster.
NO_CONFIG = ("demo", *JOB_COMMANDS)
# Stages that check their inputs, then the registered names, before Ray starts
# (`ecmf.stages.common.stage_session`): the config is loaded without the names here, whose check
# imports torch, so a missing stage is named in about a second.
CHECKED_BY_STAGE = ("enrich", "extract", "train", "refine", "pseudo-label", "tune", "predict")


def command_config(args) -> Config:
    """The config a command runs with: defaults, its YAML file, `--set` items; a search starts
    from the configured train keys, every other command from a finished search's best trial."""
    cfg = load_config(args.config, args.set, check_names=args.command not in CHECKED_BY_STAGE)
    return cfg if args.command == "tune" else apply_best(cfg)


def run_command(args) -> dict | list | None:
    """Call the command's stage's `run` with its config and options."""
    options = OPTIONS.get(args.command, lambda a: {})(args)
    stage = importlib.import_module(f"ecmf.stages.{module_name(args.command)}")
    if args.command in NO_CONFIG:
        return stage.run(**options)
    return stage.run(command_config(args), **options)


def _add_job_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--address", help="Jobs API, e.g. http://127.0.0.1:8265 (default: "
                   "RAY_API_SERVER_ADDRESS, RAY_ADDRESS, then http://127.0.0.1:8265)")
    p.add_argument("--follow", action="store_true",
                   help="stream the logs until the job ends; non-zero exit unless it succeeded")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds")
    if name == "submit":
        p.add_argument("job", help="job spec, e.g. jobs/train.yaml (format: jobs/README.md)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="config override added to every step (repeatable)")
        p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                       help="env var of the job's runtime environment; NAME alone takes its "
                       "value from this shell, keeping a secret off the command line; values "
                       "are printed as *** (repeatable)")
        p.add_argument("--submission-id", help="default: the spec's, else <name>-<time>-<hex>")
        p.add_argument("--dry-run", action="store_true",
                       help="print the equivalent `ray job submit` line and stop")
    else:
        p.add_argument("action", choices=["status", "logs", "stop", "list"])
        p.add_argument("id", nargs="?", help="submission id")
        p.add_argument("--tail", type=int, default=0, metavar="N", help="logs: last N lines")


def _verbosity(default) -> argparse.ArgumentParser:
    """-v / -q, accepted before or after the subcommand: the subcommand's copy has no default of
    its own (SUPPRESS), so it never overwrites what was given before it."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_const", const="DEBUG", dest="log_level",
                   default=default, help="debug logging, here and in Ray's workers")
    g.add_argument("-q", "--quiet", action="store_const", const="WARNING", dest="log_level",
                   default=default, help="warnings and errors only (no progress lines)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecmf", description=__doc__,
                                     parents=[_verbosity("INFO")])
    parser.add_argument("--version", action="version", version=f"ecmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in HELP.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           parents=[_verbosity(argparse.SUPPRESS)])
        if name in JOB_COMMANDS:
            _add_job_arguments(p, name)
            continue
        p.add_argument("config", nargs="?", help="YAML file of overrides of the defaults")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key, e.g. --set train.epochs=20 (repeatable)")
        if name in ("prepare-demo", "demo"):
            default = "demo-out/corpus" if name == "prepare-demo" else "demo-out"
            p.add_argument("--out", default=default, help=f"output directory (default {default})")
        if name == "import-features":
            p.add_argument("--mertools", metavar="DIR",
                           help="a MERTools feature tree: every <model>-UTT and <model>-FRA "
                           "folder in DIR becomes feature <model>")
            p.add_argument("--from", dest="sources", action="append", default=[],
                           metavar="FEATURE=FOLDER",
                           help="a MERTools folder, e.g. audio=features/hubert-large-UTT; a -FRA "
                           "folder adds seq_<feature> (repeatable; one -UTT and one -FRA each)")
            p.add_argument("--steps", type=int, help="steps of the -FRA sequences (default: "
                           "extract.encoders.<feature>.sequence_steps, else 16)")
        if name == "export-features":
            p.add_argument("--out", required=True, help="folder for <feature>-UTT/ (and -FRA/)")
            p.add_argument("--features", nargs="+", metavar="NAME",
                           help="features to export (default: all in the store)")
        if name in ("import-features", "export-features"):
            p.add_argument("--overwrite", action="store_true",
                           help="replace what is already at the destination")
        if name == "predict":
            p.add_argument("--run", help="training run directory (default: best round)")
        if name == "tune":
            p.add_argument("--resume", action="store_true",
                           help="go on with the interrupted search in <workdir>/tune")
        if name == "train":
            p.add_argument("--resume", action="store_true",
                           help="go on with the interrupted run in <workdir>/train, keeping its "
                                "finished folds (refused if the config changed)")
        if name == "evaluate":
            p.add_argument("--truth", help="CSV with name,discrete to score the submission on")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's error (`ecmf.errors.UserError`: config, input, missing stage,
    missing extra) prints its message and returns 2; a failed job returns 1; anything else is a
    bug and raises with its traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger().setLevel(args.log_level)  # also where handlers were set up before
    try:
        result = run_command(args)
    except JobFailed as e:  # the job ran and failed: not a usage error
        print(f"ecmf {args.command}: {e}", file=sys.stderr)
        return 1
    except UserError as e:
        print(f"ecmf {args.command}: error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
