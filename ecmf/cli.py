"""The `ecmf` command: one thin subcommand per stage, each loading a config and calling one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ecmf.commands import HELP, JOB_COMMANDS
from ecmf.errors import UserError


def _config(args, extra: list[str] = (), check_names: bool = True):
    from ecmf.configure import load_config

    # Types are checked here; registered names too unless the caller checks them later.
    cfg = load_config(args.config, [*extra, *args.set], check_names=check_names)
    if args.command != "tune":  # a search starts from the configured train keys
        from ecmf.tune.report import apply_best

        cfg = apply_best(cfg)
    return cfg


def _with_ray(args, fn, extra: list[str] = (), run: str | None = None):
    """Load the config, check the stage's inputs (`ecmf.workdir.check_inputs`: the corpus
    reads, the store and earlier runs it needs exist) before Ray starts, then run `fn(cfg)`
    inside a Ray session. The inputs are checked before the registered names, whose check
    imports the components (torch: seconds): a missing stage is named in about a second."""
    from ecmf.configure import validate
    from ecmf.workdir import check_inputs

    cfg = _config(args, extra, check_names=False)
    check_inputs(cfg, args.command, run)
    validate(cfg)
    from ecmf.runtime import ray_session

    with ray_session(cfg.ray):
        return fn(cfg)


def cmd_prepare_demo(args):
    from ecmf.data.demo import write_demo_corpus

    cfg = _config(args)
    return write_demo_corpus(cfg.demo, args.out)


def cmd_extract(args):
    from ecmf.features.extract import extract_features, preflight
    from ecmf.runtime import ray_session

    cfg = _config(args)
    manifest = preflight(cfg)  # a bad corpus or store fails in a second, before Ray starts
    with ray_session(cfg.ray):
        s = extract_features(cfg, manifest)
    # One line a person reads after the progress bars; the full summary follows as JSON.
    rate = f", {s['clips_per_s']} clips/s" if s.get("clips_per_s") else ""
    partial = s.get("with_failed_modality", 0)
    partial_txt = f", {partial} with a modality that failed" if partial else ""
    failed = f" (see {s['errors']})" if s.get("failed") or partial else ""
    print(f"ecmf extract: {s['done']} of {s['clips']} clips in the store, {s['skipped']} skipped "
          f"as already done, {s['failed']} failed{partial_txt}{failed}{rate}", file=sys.stderr)
    return s


def cmd_import_features(args):
    from ecmf.features.mertools import import_stage

    return import_stage(_config(args), args.sources, args.steps, args.overwrite,
                        mertools=args.mertools)


def cmd_export_features(args):
    from ecmf.features.mertools_out import export_stage

    return export_stage(_config(args), args.out, args.features or None, args.overwrite)


def _stage(args, target: str, *params, run: str | None = None):
    """`_with_ray` for the stage function `target` ("module:function", called as
    `function(cfg, *params)`): its module, which imports torch and Ray, is imported only once
    the inputs are checked."""
    import importlib

    module, name = target.split(":")
    return _with_ray(args, lambda cfg: getattr(importlib.import_module(module), name)(cfg, *params),
                     run=run)


def cmd_enrich(args):
    return _stage(args, "ecmf.enrichment.stage:enrich_corpus")


def cmd_train(args):
    result = _stage(args, "ecmf.train.fit:train_stage", args.resume)
    from ecmf.train.metrics import format_per_class

    print(format_per_class(result["cv"], "train (out-of-fold)"), file=sys.stderr)
    return result


def cmd_refine(args):
    return _stage(args, "ecmf.semi.refine:refine_labels")


def cmd_pseudo_label(args):
    return _stage(args, "ecmf.semi.rounds:run_rounds")


def cmd_tune(args):
    def stage(cfg):  # SearchError lives beside tune_stage, in a module that imports Ray
        from ecmf.tune.driver import SearchError, tune_stage

        try:
            return tune_stage(cfg, resume=args.resume)
        except SearchError as e:
            raise SystemExit(f"ecmf tune: {e}") from None

    return _with_ray(args, stage)


def cmd_predict(args):
    return _stage(args, "ecmf.predict:predict_candidates", args.run, run=args.run)


def cmd_evaluate(args):
    from ecmf.train.evaluate import evaluate
    from ecmf.train.metrics import format_per_class

    result = evaluate(_config(args), args.truth)
    for name, m in [*result["cross_validation"].items(), *([("test", result["test"])]
                                                            if "test" in result else [])]:
        print(format_per_class(m, f"{name} ({'truth file' if name == 'test' else 'out-of-fold'})"),
              file=sys.stderr)
    return result


def cmd_config(args):
    from ecmf.configure import describe

    print(describe(_config(args)), end="")
    return None


def cmd_demo(args):
    from ecmf.pipeline import format_table, run_demo

    results = run_demo(args.out, args.config, args.set)
    print(format_table(results))
    print(f"\nNote: {results['note']}.")
    print(f"\nresults: {Path(args.out) / 'results.json'} ({results['seconds']:.0f} s in all)")
    return None


def cmd_submit(args):
    from ecmf import jobs

    spec = jobs.load_job_spec(args.job, args.set, args.env)
    address = jobs.resolve_address(args.address)
    sid = args.submission_id or spec.submission_id or jobs.new_submission_id(spec.name)
    print(f"equivalent: {jobs.ray_job_submit_command(spec, address, sid)}")
    if spec.hidden_names():
        print(f"ecmf submit: {', '.join(spec.hidden_names())} shown as {jobs.MASK}; the job gets "
              "the real values", file=sys.stderr)
    if args.dry_run:
        print("\n".join(spec.plan()))
        return None
    client = jobs.connect(address)
    sid = jobs.submit(client, spec, sid)
    print(f"submitted {sid} to {address}\nlogs: ecmf jobs logs {sid} --follow --address {address}")
    if args.follow:
        print(f"job {sid} {jobs.follow(client, sid, timeout_s=args.timeout)}")
    return None


def cmd_jobs(args):
    from ecmf import jobs

    if args.action != "list" and not args.id:
        raise UserError(f"ecmf jobs {args.action}: give the job's submission id")
    client = jobs.connect(args.address)
    if args.action == "list":
        return jobs.list_jobs(client)
    if args.action == "status":
        return jobs.job_status(client, args.id)
    if args.action == "stop":
        return jobs.stop(client, args.id)
    if args.follow:
        print(f"job {args.id} {jobs.follow(client, args.id, timeout_s=args.timeout)}")
    else:
        print(jobs.log_tail(client, args.id, args.tail))
    return None


COMMANDS = {name: (globals()[f"cmd_{name.replace('-', '_')}"], help_)
            for name, help_ in HELP.items()}


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
    from ecmf import __version__

    parser = argparse.ArgumentParser(prog="ecmf", description=__doc__,
                                     parents=[_verbosity("INFO")])
    parser.add_argument("--version", action="version", version=f"ecmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           parents=[_verbosity(argparse.SUPPRESS)])
        if name in JOB_COMMANDS:
            p.set_defaults(fn=fn)
            _add_job_arguments(p, name)
            continue
        p.add_argument("config", nargs="?", help="YAML file of overrides of the defaults")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key, e.g. --set train.epochs=20 (repeatable)")
        p.set_defaults(fn=fn)
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
    from ecmf.jobs import JobFailed

    try:
        result = args.fn(args)
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
