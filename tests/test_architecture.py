"""The package's shape, read from its source (AST, imports inside functions included): the
stage flow goes one way, the top level stays small, light modules are imported at the top, and
the README's map names what the tree holds."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ecmf"
# Bottom to top: a unit may import its own layer's other units only where no cycle results,
# and the layers below it, never one above.
LAYERS = [
    {"ecmf", "ecmf.errors", "ecmf.schema", "ecmf.registry", "ecmf.keys"},
    {"ecmf.config"},
    {"ecmf.workdir", "ecmf.runtime"},
    {"ecmf.data"},
    {"ecmf.features", "ecmf.models", "ecmf.enrichment"},
    {"ecmf.train"},
    {"ecmf.semi", "ecmf.tune"},
    {"ecmf.stages"},
    {"ecmf.cli"},
]
HEAVY = {"torch", "ray", "transformers", "decord", "sklearn", "matplotlib", "cv2", "av",
         "vllm", "retinaface", "opensmile", "mlflow", "safetensors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """A module's unit: its package right under ecmf (`ecmf.train`), or a top-level module."""
    return ".".join(module.split(".")[:2])


@cache
def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PKG.rglob("*.py"))}


def imports(tree: ast.Module, module: str, top_only: bool = False):
    """(imported module, line, at the top?) for every import of `tree`; at the top means
    outside every function (a module's `if TYPE_CHECKING:` block included)."""
    in_function = {id(n) for f in ast.walk(tree)
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    is_pkg = module in {module_name(p) for p in PKG.rglob("__init__.py")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + int(is_pkg)]
                base = ".".join([*parts, *([base] if base else [])])
            # `from ecmf import schema` imports the module ecmf.schema
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base
                     for a in node.names]
        else:
            continue
        at_top = id(node) not in in_function
        if top_only and not at_top:
            continue
        for name in names:
            yield name, node.lineno, at_top


def unit_edges() -> dict[tuple[str, str], str]:
    edges = {}
    for mod, tree in modules().items():
        for name, line, _ in imports(tree, mod):
            if name.startswith("ecmf") and unit(name) != unit(mod):
                edges.setdefault((unit(mod), unit(name)), f"{mod}:{line} imports {name}")
    return edges


def layer(u: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if u in units)


def test_every_unit_has_a_layer():
    units = {unit(m) for m in modules()}
    placed = set().union(*LAYERS)
    assert units <= placed, f"units without a layer in LAYERS: {sorted(units - placed)}"


def test_no_unit_imports_a_layer_above_it():
    upward = [why for (a, b), why in unit_edges().items() if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_units():
    edges = unit_edges()
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [f"{a} -> {b} ({why}) and back" for (a, b), why in edges.items() if a in reach(b)]
    assert not cycles, "\n".join(cycles)


def test_training_never_imports_semi_and_libraries_never_import_stages():
    bad = [why for (a, b), why in unit_edges().items()
           if (a == "ecmf.train" and b == "ecmf.semi")
           or (b == "ecmf.stages" and a not in ("ecmf.stages", "ecmf.cli"))]
    assert not bad, "\n".join(bad)


@cache
def heavy(module: str) -> bool:
    """Whether importing `module` imports a heavy third-party package (at its top, or through
    an ecmf module it imports at its top)."""
    tree = modules().get(module)
    if tree is None:
        return False
    for name, _, _ in imports(tree, module, top_only=True):
        if name.split(".")[0] in HEAVY:
            return True
        if name.startswith("ecmf") and name != module and heavy(name):
            return True
    return False


def test_light_modules_of_ecmf_are_imported_at_the_top():
    """An import inside a function hides a dependency; it is kept only for a module that loads
    torch, Ray or another heavy package, so that `import ecmf` and the CLI stay fast."""
    hidden = [f"{mod}:{line} imports {name} inside a function"
              for mod, tree in modules().items()
              for name, line, at_top in imports(tree, mod)
              if name.startswith("ecmf") and not at_top and not heavy(name)]
    assert not hidden, "\n".join(hidden)


def test_cli_and_config_stay_light():
    assert not heavy("ecmf.cli") and not heavy("ecmf.config")


def test_the_top_level_is_small_and_the_readme_maps_the_tree():
    top = sorted(p.name for p in PKG.iterdir()
                 if (p.suffix == ".py" and p.name != "__init__.py")
                 or (p.is_dir() and (p / "__init__.py").is_file()))
    modules_ = [n for n in top if n.endswith(".py")]
    assert len(modules_) <= 8, modules_
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Map of the code", 1)[1].split("```")[1]
    mapped = re.findall(r"^  (\w+(?:\.py|/))", block, flags=re.M)
    on_disk = [n if n.endswith(".py") else f"{n}/" for n in top]
    assert sorted(mapped) == on_disk
    for pkg in (n for n in top if not n.endswith(".py")):
        subs = sorted(p.name for p in (PKG / pkg).glob("*.py") if p.name != "__init__.py")
        missing = [s for s in subs if s.removesuffix(".py") not in block]
        assert not missing, f"README's map does not name ecmf/{pkg}/{missing}"
