"""Log formats: how a topic's records become inference events (config `source.format`,
docs/formats.md). `native` is the schema itself, decoded by `daemon.ingest.decode`'s fast path;
the others are `RecordFormat`s, one record at a time, or `PairedFormat`s, whose inference comes
as a request record and a response record (daemon/ingest/formats/pairs.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from daemon.ingest.events import InferenceEvent
from daemon.ingest.formats import openai
from daemon.ingest.formats.cloudevents import CloudEventsFormat
from daemon.ingest.formats.mapped import FIELD_TYPES, MappedFormat, Source, parse_path, scale_of
from daemon.ingest.formats.pairs import PairedFormat
from daemon.ingest.formats.seldon import SeldonFormat
from daemon.ingest.sources import Headers

FORMATS = ("native", "mapped", "openai", "cloudevents-inference", "seldon")
PAIRED = {"cloudevents-inference": CloudEventsFormat, "seldon": SeldonFormat}  # two records an inference


class RecordFormat(Protocol):
    def decode(self, value: bytes, headers: Headers | None) -> InferenceEvent:
        """The record's event; raises on bad input (msgspec's errors, MissingField)."""
        ...


def build(
    kind: str,
    fields: Mapping[str, Any],
    features: str | Mapping[str, str] | None,
    join: Mapping[str, Any] | None = None,
) -> RecordFormat | PairedFormat | None:
    """The format of a config's `source.format` (None: native). Raises ValueError naming what is
    wrong: a check-config error. `join`: the options of the formats that join two records
    (ttl_s, max_pending, feature_names)."""
    if kind == "native" or kind in PAIRED:
        if fields or features:
            raise ValueError(f"fields and features map the mapped and openai formats, not {kind}")
        return None if kind == "native" else PAIRED[kind](**(join or {}))
    if kind == "openai":
        merged = sources({**openai.FIELDS, **fields})
        for name, expr in openai.DERIVED.items():
            merged[name] = [*merged.get(name, []), Source(derived=expr)]
        return MappedFormat(merged, _features(features))
    return MappedFormat(sources(fields), _features(features))


def sources(fields: Mapping[str, Any]) -> dict[str, list[Source]]:
    """The config's field specs as sources: a path string, {path|header|const, unit}, or a list
    of those tried in order."""
    out: dict[str, list[Source]] = {}
    for name, spec in fields.items():
        if name not in FIELD_TYPES or name == "features":
            out[name] = []  # MappedFormat says why
            continue
        out[name] = [_source(name, s) for s in (spec if isinstance(spec, list) else [spec])]
    return out


def _source(name: str, spec: Any) -> Source:
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"fields.{name}: a path, or one of path, header, const (with a unit for times)")
    given = [k for k in ("path", "header", "const") if spec.get(k) is not None]
    if len(given) != 1 or set(spec) - {"path", "header", "const", "unit"}:
        raise ValueError(f"fields.{name}: exactly one of path, header, const (and unit for a time); got {dict(spec)}")
    try:
        scale = scale_of(name, spec.get("unit"))
    except (ValueError, KeyError) as e:
        raise ValueError(f"fields.{name}: {e}") from None
    if "path" in given:
        try:
            return Source(path=parse_path(str(spec["path"])), scale=scale)
        except ValueError as e:
            raise ValueError(f"fields.{name}: {e}") from None
    if "header" in given:
        return Source(header=str(spec["header"]), scale=scale)
    try:
        const = msgspec.convert(spec["const"], FIELD_TYPES[name], strict=False)
    except msgspec.ValidationError as e:
        raise ValueError(f"fields.{name}: constant {spec['const']!r}: {e}") from None
    return Source(const=const, scale=scale)


def _features(spec: str | Mapping[str, str] | None) -> Any:
    try:
        if spec is None or isinstance(spec, str):
            return None if spec is None else parse_path(spec)
        return {name: parse_path(path) for name, path in spec.items()}
    except ValueError as e:
        raise ValueError(f"features: {e}") from None
