"""Reading and describing configs: `read_config` merges the defaults, a command's own defaults,
a YAML file and `--set` items into the frozen dataclasses (which check their own values);
`describe` prints a config as YAML with each key's comment (`ecmf config`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from ecmf.config import sections
from ecmf.config.dicts import ConfigError, from_dict, merge, parse_set, to_dict
from ecmf.config.sections import Config


def read_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> Config:
    """Defaults, then `base` (a command's own defaults), then the YAML file, then `--set` items;
    types and values checked. Names that components register are checked a level up, by
    `ecmf.stages.common.validate` (it imports the components)."""
    data = to_dict(Config())
    if base:
        data = merge(data, base)
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top, got {loaded!r}")
        data = merge(data, loaded)
    for item in sets:
        data = merge(data, parse_set(item))
    return from_dict(Config, data)


# ---- ecmf config: the resolved config as YAML, each key with its comment --------------------


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class source: the comment on the field's line, else the
    first sentence of the comment lines just above it, else ''."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        lines, _ = inspect.getsourcelines(klass)
        text = _dedent(lines)
        body = ast.parse(text).body[0].body
        src = text.split("\n")
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = src[node.lineno - 1]
                note = _trailing_comment(line)
                if not note:
                    above, j = [], node.lineno - 2
                    while j >= 0 and src[j].strip().startswith("#"):
                        above.insert(0, src[j].strip().lstrip("#").strip())
                        j -= 1
                    note = _first_sentence(" ".join(above))
                out[node.target.id] = note
    return out


def _first_sentence(text: str) -> str:
    """A comment block's first sentence: what one line beside a key can hold."""
    m = re.search(r"(?<!e\.g)(?<!i\.e)\.\s", text)
    return text[:m.start() + 1] if m else text


def _dedent(lines: list[str]) -> str:
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "".join(line[indent:] if line.strip() else "\n" for line in lines)


def _trailing_comment(line: str) -> str:
    """The `# ...` of a source line, outside string literals."""
    import io
    import tokenize

    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                return tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return ""


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _comment(text: str) -> str:
    return f"  # {text}" if text else ""


def _lines(obj: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    comments = field_comments(type(obj))
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        note = _comment(comments.get(f.name, ""))
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:{note}")
            out += _lines(value, indent + 2)
        elif isinstance(value, dict) and value and any(
                dataclasses.is_dataclass(v) for v in value.values()):
            out.append(f"{pad}{f.name}:{note}")
            for k, v in value.items():
                out.append(f"{pad}  {k}:")
                out += _lines(v, indent + 4)
        elif isinstance(value, dict) and value and typing.get_origin(hints[f.name]) is dict:
            out.append(f"{pad}{f.name}:{note}")
            block = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=10**6)
            out += [f"{pad}  {line}" for line in block.rstrip("\n").split("\n")]
        else:
            out.append(f"{pad}{f.name}: {_scalar(value)}{note}")
    return out


def describe(cfg: Config) -> str:
    """The config as YAML that loads back to the same values, each key with its comment."""
    head = [f"# {line}".rstrip() for line in
            (sections.__doc__ or "").strip().split("\n")[:1]]
    return "\n".join([*head, *_lines(cfg, 0)]) + "\n"
