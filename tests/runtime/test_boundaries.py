"""Every Ray task and every actor class that may hold a GPU hands its result back through
`ecmf.runtime.devices.to_host`: read from the source (AST), so that a new remote function
that forgets it fails here. tests/runtime/test_devices.py runs them to show the results are
what `to_host` made."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "ecmf"
# Actor classes of GPU pools (Ray Data map_batches with num_gpus), whose __call__ returns cross
# to the next operator or the driver: the encoders, the fold-ensemble predictor, the LLM.
ACTORS = {"ecmf/features/encoders.py": ["Encoder", "EncoderGroup"],
          "ecmf/train/predict.py": ["Predictor"],
          "ecmf/enrichment/backends.py": ["TransformersBackend"]}


def _returns(fn: ast.FunctionDef) -> list[ast.expr]:
    own = [n for n in ast.walk(fn) if isinstance(n, (ast.Return, ast.Yield))
           and n.value is not None]
    nested = {id(r) for inner in ast.walk(fn) if inner is not fn
              and isinstance(inner, (ast.FunctionDef, ast.Lambda)) for r in ast.walk(inner)}
    return [n.value for n in own if id(n) not in nested]


def _through_to_host(expr: ast.expr) -> bool:
    return (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "to_host" and isinstance(expr.func.value, ast.Name)
            and expr.func.value.id == "devices")


def _remote_functions() -> list[tuple[str, ast.FunctionDef]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "remote" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "ray" and node.args
                    and isinstance(node.args[0], ast.Name)):
                name = node.args[0].id
                assert name in defs, f"{path}: ray.remote({name}) of a function defined elsewhere"
                out.append((f"{path.relative_to(PKG.parent)}:{name}", defs[name]))
    return out


def test_every_remote_function_returns_through_to_host():
    remote = _remote_functions()
    assert {name.split(":")[1] for name, _ in remote} >= {
        "train_fold_task", "fold_stepper_task", "_task"}
    bad = [f"{name}: {ast.unparse(expr)}" for name, fn in remote for expr in _returns(fn)
           if not _through_to_host(expr)]
    assert not bad, "\n".join(bad)


def test_every_gpu_actor_returns_through_to_host():
    bad = []
    for rel, classes in ACTORS.items():
        tree = ast.parse((PKG.parent / rel).read_text())
        found = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for cls in classes:
            call = next(n for n in found[cls].body
                        if isinstance(n, ast.FunctionDef) and n.name == "__call__")
            bad += [f"{rel}:{cls}.__call__: {ast.unparse(e)}" for e in _returns(call)
                    if not _through_to_host(e)]
    assert not bad, "\n".join(bad)
