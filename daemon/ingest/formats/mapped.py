"""`mapped`: any JSON log, its fields found by the paths the config names (docs/formats.md).

Each schema field comes from a path in the record (`a.b[0].c`: keys and list indices), a Kafka
header, or a constant; a list of those is tried in order, the first present wins. Times convert
from their unit (s, ms, us, ns) to the schema's (ms; seconds for `timestamp`, which may also be
an RFC 3339 string). Features are a map at a path, or named paths.

Speed: the paths are compiled into msgspec Struct types holding only what they reach, with the
schema's types at the leaves. A record decodes at C speed, skipping everything else, and its
values are checked as the native format checks them; a few attribute reads then build the event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from daemon.ingest.events import FeatureValue, InferenceEvent
from daemon.ingest.sources import Headers

Path = tuple[str | int, ...]
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# Time fields and their unit: the schema's durations are in ms, its timestamp in seconds.
DURATIONS = ("latency_ms", "ttft_ms", "tpot_ms", "queue_ms", "decode_ms")
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}  # in seconds
FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(InferenceEvent)}
REQUIRED = ("request_id", "model")


def parse_path(text: str) -> Path:
    """`a.b[0].c` -> ('a', 'b', 0, 'c'). Keys are split on dots; `[n]` indexes a list.

    >>> parse_path("choices[0].finish_reason")
    ('choices', 0, 'finish_reason')
    """
    steps: list[str | int] = []
    pos = 0
    for m in _STEP.finditer(text):
        if m.start() != pos and not (m.start() == pos + 1 and text[pos] == "." and steps):
            break
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not text or pos != len(text) or not steps or not isinstance(steps[0], str):
        raise ValueError(f"{text!r} is not a path: keys separated by dots, list indices as [n] (a.b[0].c)")
    return tuple(steps)


class Source(NamedTuple):
    """Where one schema field's value comes from: a path, a header or a constant; `scale`
    converts a time from its unit."""

    path: Path | None = None
    header: str | None = None
    const: Any = None
    scale: float = 1.0

    def describe(self) -> str:
        if self.path is not None:
            return "path " + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in self.path).lstrip(".")
        return f"header {self.header}" if self.header is not None else "constant"


def scale_of(field: str, unit: str | None) -> float:
    """The factor from `unit` to the field's own (ms for durations, s for the timestamp)."""
    if unit is None:
        return 1.0
    if field == "timestamp":
        return UNITS[unit]
    if field in DURATIONS:
        return UNITS[unit] / UNITS["ms"]
    raise ValueError(f"{field} is not a time: only {', '.join(('timestamp', *DURATIONS))} take a unit")


class _Node:
    """A path tree: keys (object) or indices (list) to nodes, or a leaf with its schema type."""

    def __init__(self) -> None:
        self.keys: dict[str | int, _Node] = {}
        self.leaf: Any = None  # the leaf's type, when a path ends here
        self.name: str = ""  # the Struct field name it has in its parent (f0, f1, ...)


class MappedFormat:
    """Records of one JSON shape into inference events, by a mapping of schema fields to sources.

    >>> f = MappedFormat({"request_id": [Source(("id",))], "model": [Source(const="m")],
    ...                   "latency_ms": [Source(("t", "total"), scale=1000.0)]}, ("x",))
    >>> f.decode(b'{"id": "r1", "t": {"total": 0.25}, "x": {"a": 1}}', None)
    InferenceEvent(request_id='r1', model='m', ... latency_ms=250.0, ... features={'a': 1.0}, ...)
    >>> f.decode(b'{"t": {"total": 0.25}}', None)
    Traceback (most recent call last):
    daemon.ingest.formats.mapped.MissingField: request_id: path id not in the record
    """

    def __init__(
        self,
        fields: Mapping[str, Sequence[Source]],
        features: Path | Mapping[str, Path] | None = None,
        finish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`finish`: a format's last word on the fields found (openai: errors, derived latency)."""
        for name in fields:
            if name not in FIELD_TYPES or name == "features":
                raise ValueError(f"fields.{name}: not a schema field; one of {', '.join(FIELD_TYPES)} (features apart)")
        for name in REQUIRED:
            if not fields.get(name):
                raise ValueError(f"fields.{name}: required; map it to a path, a header or a constant")
        self._finish = finish
        root = _Node()
        for name, sources in fields.items():
            for s in sources:
                if s.path is not None:
                    _add(root, s.path, FIELD_TYPES[name])
        if isinstance(features, tuple):
            _add(root, features, FIELD_TYPES["features"])
        elif features is not None:
            for path in features.values():
                _add(root, path, FeatureValue)
        # Not Optional at the top: a record is an object (null is `not_an_object`).
        self._decoder = msgspec.json.Decoder(_struct(root, "Record").__args__[0])
        # Per field its sources, and for those with a path the getter that reads it off a record.
        self._fields = [
            (name, list(sources), [None if s.path is None else _getter(root, s.path) for s in sources])
            for name, sources in fields.items()
        ]
        self._features: Callable[[Any], Any] | list[tuple[str, Callable[[Any], Any]]] | None = None
        if isinstance(features, tuple):
            self._features = _getter(root, features)
        elif features is not None:
            self._features = [(name, _getter(root, path)) for name, path in features.items()]

    def decode(self, value: bytes, headers: Headers | None) -> InferenceEvent:
        """The record's event; raises msgspec's errors on bad JSON or values, MissingField when a
        required field is nowhere (the decoder turns them into counted reasons)."""
        record = self._decoder.decode(value)
        out: dict[str, Any] = {}
        for name, sources, getters in self._fields:
            for source, get in zip(sources, getters, strict=True):
                if get is not None:
                    v = get(record)
                elif source.header is not None:
                    v = _header(headers, source.header)
                    if v is not None:
                        v = msgspec.convert(v, FIELD_TYPES[name], strict=False)
                else:
                    v = source.const
                if v is not None:
                    out[name] = v * source.scale if source.scale != 1.0 and isinstance(v, float | int) else v
                    break
        if self._finish is not None:
            self._finish(out)
        for name in REQUIRED:
            if name not in out:
                raise MissingField(f"{name}: {self._where(name)} not in the record")
        features = self._features
        if features is not None:
            if isinstance(features, list):
                named = {name: get(record) for name, get in features}
                out["features"] = {k: v for k, v in named.items() if v is not None} or None
            else:
                out["features"] = features(record)
        return InferenceEvent(**out)

    def _where(self, field: str) -> str:
        return " or ".join(s.describe() for name, ss, _ in self._fields if name == field for s in ss)


class MissingField(ValueError):
    """A required field's sources are all absent from a record: its detail names them."""


def _add(root: _Node, path: Path, leaf: Any) -> None:
    """Put a path into the tree, its leaf of the schema field's type."""
    node = root
    for step in path:
        if node.leaf is not None:
            raise ValueError(f"path {path!r} goes through another path's value")
        if node.keys and isinstance(next(iter(node.keys)), int) != isinstance(step, int):
            raise ValueError(f"path {path!r}: a place is both an object and a list in the mapping")
        if isinstance(step, int) and node.keys:  # a list's elements decode alike: one node for all
            node = node.keys.setdefault(step, next(iter(node.keys.values())))
        else:
            node = node.keys.setdefault(step, _Node())
    if node.keys or (node.leaf is not None and node.leaf != leaf):
        raise ValueError(f"path {path!r} is both a value and goes on, or holds two kinds of value")
    node.leaf = leaf


def _struct(node: _Node, name: str) -> Any:
    if node.leaf is not None:
        return node.leaf | None
    if isinstance(next(iter(node.keys)), int):
        # A list: its elements decode alike (one node for every index), and are read by index.
        return list[_struct(next(iter(node.keys.values())), name + "Item")] | None  # type: ignore[misc]
    fields = []
    rename = {}
    for i, (key, child) in enumerate(node.keys.items()):
        child.name = f"f{i}"
        rename[child.name] = str(key)
        fields.append((child.name, _struct(child, f"{name}_{i}"), None))
    return msgspec.defstruct(name, fields, rename=rename, gc=False) | None


def _getter(root: _Node, path: Path) -> Callable[[Any], Any]:
    """Reads `path` off a decoded record: attribute per key, index per list step; None if absent."""
    steps: list[tuple[bool, str | int]] = []
    node = root
    for step in path:
        child = node.keys[step]
        steps.append((isinstance(step, int), step if isinstance(step, int) else child.name))
        node = child

    def get(record: Any) -> Any:
        x = record
        for is_index, step in steps:
            if x is None:
                return None
            if is_index:
                assert isinstance(step, int)
                x = x[step] if step < len(x) else None
            else:
                x = getattr(x, step)  # type: ignore[arg-type]
        return x

    return get


def _header(headers: Headers | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None
