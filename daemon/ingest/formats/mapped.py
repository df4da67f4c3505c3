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

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from daemon.ingest.events import FeatureValue, InferenceEvent
from daemon.ingest.failures import Bad
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
    converts a time from its unit. `derived` (formats only, not config): a Python expression
    over other schema fields, read after every other source."""

    path: Path | None = None
    header: str | None = None
    const: Any = None
    scale: float = 1.0
    derived: str | None = None

    def describe(self) -> str:
        if self.path is not None:
            return "path " + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in self.path).lstrip(".")
        if self.derived is not None:
            return f"derived ({self.derived})"
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
    ) -> None:
        for name in fields:
            if name not in FIELD_TYPES or name == "features":
                raise ValueError(f"fields.{name}: not a schema field; one of {', '.join(FIELD_TYPES)} (features apart)")
        for name in REQUIRED:
            if not fields.get(name):
                raise ValueError(f"fields.{name}: required; map it to a path, a header or a constant")
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
        decoder = msgspec.json.Decoder(_struct(root, "Record").__args__[0])
        # The record's event; raises msgspec's errors on bad JSON or values, MissingField when a
        # required field is nowhere (the decoder turns them into counted reasons).
        self.decode: Callable[[bytes, Headers | None], InferenceEvent] = _compile(
            root, fields, features, decoder.decode
        )


class MissingField(Bad):
    """A required field's sources are all absent from a record: its detail names them."""

    def __init__(self, detail: str) -> None:
        super().__init__("missing_field", detail)


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


def _compile(
    root: _Node,
    fields: Mapping[str, Sequence[Source]],
    features: Path | Mapping[str, Path] | None,
    decode: Callable[[bytes], Any],
) -> Callable[[bytes, Headers | None], InferenceEvent]:
    """The mapping as one generated function of (record value, headers): `decode`, straight-line attribute
    reads into locals named as the fields, alternatives as `if field is None`, derived values last,
    then the event. A loop over sources and getters cost four times as much."""
    env: dict[str, Any] = {
        "InferenceEvent": InferenceEvent, "MissingField": MissingField, "convert": msgspec.convert,
        "T": FIELD_TYPES, "datetime": dt.datetime, "ValidationError": msgspec.ValidationError, "decode": decode,
    }  # fmt: skip
    body: list[str] = ["r = decode(value)"]
    reader = _Reader(root)
    if any(s.header is not None for sources in fields.values() for s in sources):
        body.append("h = dict(reversed(headers)) if headers else {}")  # the first of a name wins
    later: list[str] = []
    for name, sources in fields.items():
        for j, source in enumerate(sources):
            block = [*_read(reader, source, name, env, f"c_{name}_{j}"), f"{name} = t"]
            if j:
                block = [f"if {name} is None:", *("    " + line for line in block)]
            (later if source.derived is not None else body).extend(block)
    body += later
    if isinstance(features, tuple):
        body += [*reader.path(features), "feats = t"]
    elif features is not None:
        body.append("feats = {}")
        for name, path in features.items():
            body += [*reader.path(path), f"if t is not None: feats[{name!r}] = t"]
        body.append("feats = feats or None")
    else:
        body.append("feats = None")
    for name in REQUIRED:
        where = " or ".join(s.describe() for s in fields[name])
        body.append(f"if {name} is None: raise MissingField({f'{name}: {where} not in the record'!r})")
    # Positional, every field in the schema's order (a keyword call costs twice as much).
    args = []
    for f in msgspec.structs.fields(InferenceEvent):
        if f.name == "features":
            args.append("feats")
        elif f.name not in fields:
            args.append(repr(None if f.default is msgspec.NODEFAULT else f.default))
        elif f.default is msgspec.NODEFAULT or f.default is None:
            args.append(f.name)
        else:
            args.append(f"{f.name} if {f.name} is not None else {f.default!r}")
    body.append(f"return InferenceEvent({', '.join(args)})")
    # The objects and lists on the paths are read first, once each (reader.lines, filled above).
    body[1:1] = reader.lines
    code = "def extract(value, headers):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(code, "<mapping>", "exec"), env)
    extract: Callable[[bytes, Headers | None], InferenceEvent] = env["extract"]
    return extract


def _read(reader: _Reader, source: Source, name: str, env: dict[str, Any], const: str) -> list[str]:
    """Statements that leave one source's value (or None) in `t`."""
    if source.path is not None:
        lines = reader.path(source.path)
    elif source.header is not None:
        lines = [f"t = h.get({source.header!r})", "if t is not None: t = t.decode('utf-8', 'replace')"]
        bounds = _str_bounds(FIELD_TYPES[name])
        if bounds is None:  # a number, a time: as the schema takes it
            lines.append(f"if t is not None: t = convert(t, T[{name!r}], strict=False)")
        else:  # a name: its length checked here (convert costs as much as the rest of the record)
            lo, hi = bounds
            message = f"Expected `str` of length {lo}..{hi} - at header `{source.header}`"
            lines.append(f"if t is not None and not {lo} <= len(t) <= {hi}: raise ValidationError({message!r})")
    elif source.derived is not None:
        lines = [f"t = {source.derived}"]
    else:
        env[const] = source.const
        lines = [f"t = {const}"]
    if source.scale != 1.0:
        lines.append(f"if t is not None and t.__class__ is not datetime: t = t * {source.scale!r}")
    return lines


class _Reader:
    """Reads paths off the decoded record `r`: each object or list on the way is read once into a
    local (None where the record stops), and a path is one line off its parent's local."""

    def __init__(self, root: _Node) -> None:
        self.root = root
        self.locals: dict[Path, str] = {(): "r"}
        self.lines: list[str] = []

    def parent(self, path: Path) -> str:
        """The local holding the value at `path` (reading what it needs first)."""
        if path not in self.locals:
            read = self.step(path)  # its parents first
            name = self.locals[path] = f"p{len(self.locals)}"
            self.lines.append(f"{name} = {read}")
        return self.locals[path]

    def step(self, path: Path) -> str:
        """An expression for the value at `path`, given its parent's local."""
        up = self.parent(path[:-1])
        node = self.root
        for s in path:
            node = node.keys[s]
        last = path[-1]
        read = f"{up}[{last}] if len({up}) > {last} else None" if isinstance(last, int) else f"{up}.{node.name}"
        if not path[:-1]:  # the record itself is never None
            return read
        return f"({read}) if {up} is not None else None"

    def path(self, path: Path) -> list[str]:
        """Statements that leave the value at `path` (or None) in `t`."""
        return [f"t = {self.step(path)}"]


def _str_bounds(tp: Any) -> tuple[int, int] | None:
    """(min, max) length of a string field's type (Annotated str with msgspec.Meta); None otherwise."""
    args = getattr(tp, "__args__", ())
    if getattr(tp, "__origin__", None) is not str or not args:
        inner = [a for a in args if getattr(a, "__origin__", None) is str]
        if len(inner) != 1:
            return None
        tp = inner[0]
    meta = next((m for m in getattr(tp, "__metadata__", ()) if isinstance(m, msgspec.Meta)), None)
    if meta is None:
        return None
    return meta.min_length or 0, meta.max_length if meta.max_length is not None else 2**31
