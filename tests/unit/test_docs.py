"""Docs match the code (issue 18): every metric, config key, command and flag that docs/ (and the
README and deploy/ READMEs) name exists, and every command and flag is documented. The metrics
table itself is checked both ways in test_exposition.py; every config key is in the example
config (test_config.py), which the docs point to."""

from __future__ import annotations

import argparse
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from daemon.cli import build_parser
from daemon.config import Config
from daemon.export.families import FAMILIES

ROOT = Path(__file__).parents[2]
DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md", *(ROOT / "deploy").rglob("*.md")])
# Dotted paths in docs that are not config keys though they start like one: the openai format's
# record paths (vLLM's per-request `metrics` block, docs/formats.md).
RECORD_PATHS = {
    "metrics.time_to_first_token_ms",
    "metrics.mean_itl_ms",
    "metrics.queue_time_ms",
    "metrics.generation_time_ms",
    "metrics.tokens_per_second",
    "metrics.e2e_latency_ms",
    "metrics.latency_ms",
}
FILE = re.compile(r"\.(py|json|jsonl|md|ya?ml|txt|html|proto)$")


def _text() -> dict[Path, str]:
    return {p: p.read_text() for p in DOCS}


def _code(text: str) -> list[str]:
    """Code spans and fenced blocks: where docs write commands, flags and keys."""
    return re.findall(r"```.*?```|`[^`\n]+`", text, flags=re.S)


def test_every_metric_the_docs_name_is_exported() -> None:
    kinds = {n + "_total" if k == "counter" else n: k for n, (k, _, _) in FAMILIES.items()}
    series = ("_bucket", "_sum", "_count")
    names = set(kinds) | {n + s for n, k in kinds.items() if k in ("histogram", "summary") for s in series}
    unknown = {
        (m, p.name)
        for p, text in _text().items()
        for m in re.findall(r"\binferwatch_[a-z0-9_]*[a-z0-9_*]", text)
        if m not in names and not (m.endswith(("_", "*")) and any(n.startswith(m.rstrip("*")) for n in names))
    }
    assert unknown == set()


def _subparsers() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        for name, p in sub.choices.items()
    }


def test_every_command_and_flag_the_docs_write_exists_and_each_is_documented() -> None:
    commands = _subparsers()
    wrong, used = [], set()
    text = _text()
    for p, body in text.items():
        for block in _code(body):
            for line in block.splitlines():
                for m in re.finditer(r"\binferwatch ([a-z][a-z-]*)((?:[ \t]+\S+)*)", line):
                    command, rest = m.groups()
                    if command not in commands:
                        wrong.append((p.name, line.strip()))
                        continue
                    used.add(command)
                    flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)
                    wrong += [(p.name, f) for f in flags if f not in commands[command]]
    assert wrong == []
    assert set(commands) - used == set(), "commands no doc shows"
    mentioned = set(re.findall(r"--[a-z][a-z0-9-]*", "\n".join(text.values())))
    assert {(c, f) for c, flags in commands.items() for f in flags if f not in mentioned} == set(), "flags no doc names"


def _inner(t: Any) -> Any:
    """The section type a field's type leads to: a model, ("key", model) for a dict of them, or None."""
    origin = typing.get_origin(t)
    if origin is typing.Annotated or origin in (list, tuple, set, frozenset):
        return _inner(typing.get_args(t)[0])
    if origin is dict:
        return ("key", _inner(typing.get_args(t)[1]))
    if origin in (typing.Union, types.UnionType):
        return next((r for r in map(_inner, typing.get_args(t)) if r is not None), None)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _is_key(parts: list[str]) -> bool:
    node: Any = Config
    for part in parts:
        if node is None:  # a leaf, with more after it
            return False
        if isinstance(node, tuple):  # a dict's key: any name (`slo.models.<model>`)
            node = node[1]
            continue
        field = node.model_fields.get(part.removesuffix("[]"))
        if field is None:
            return False
        node = _inner(field.annotation)
    return True


def test_every_config_key_the_docs_name_exists() -> None:
    sections = set(Config.model_fields)
    path = re.compile(r"(?<![\w./$-])([a-z_]+(?:\[\])?(?:\.(?:[a-z_0-9]+|<[a-z_-]+>)(?:\[\])?)+)(?![\w(/-])")
    unknown = {
        (m, p.name)
        for p, text in _text().items()
        for span in re.findall(r"`([^`\n]+)`", text)
        for m in path.findall(span)
        if m.split(".")[0] in sections and m not in RECORD_PATHS and not FILE.search(m) and not _is_key(m.split("."))
    }
    assert unknown == set()
