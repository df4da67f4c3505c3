"""The shape every drift detector shares (River's), and the parameter checks they use."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

InputKind = Literal["numeric", "binary", "categorical"]


@runtime_checkable
class Detector(Protocol):
    """A streaming change detector.

    `update()` takes one value; read `drift_detected` after it. As in River, a detector resets
    itself on the update that follows a detection. `update_many()` returns the indices within
    `xs` at which drift was detected (the detector reset after each). `snapshot()` returns a
    JSON-serialisable dict that `restore()` on an instance with the same parameters accepts.

    `input_kind` says what `update()` takes: "numeric" (finite floats; non-finite values are
    skipped), "binary" (bool, True = error) or "categorical" (str).
    """

    input_kind: ClassVar[InputKind]

    def update(self, x: Any) -> None: ...

    def update_many(self, xs: Iterable[Any], *, stop_at_first: bool = False) -> list[int]: ...

    @property
    def drift_detected(self) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def clone(self) -> Self: ...


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_float(
    name: str, value: object, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Raise ValueError unless `value` is a real number in the interval; NaN is never in range."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be a number in {_interval(low, high, low_open, high_open)}, got {value!r}")


def check_int(name: str, value: object, low: int, high: float = math.inf) -> None:
    """Raise ValueError unless `value` is an int (not bool) with low <= value <= high."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_state(state: dict[str, Any], kind: str, params: dict[str, Any]) -> None:
    """Refuse a snapshot taken from another detector class or with other parameters."""
    if state.get("kind") != kind:
        raise ValueError(f"snapshot is for detector {state.get('kind')!r}, not {kind!r}")
    if state.get("params") != params:
        raise ValueError(
            f"snapshot parameters {state.get('params')!r} differ from this detector's {params!r}; "
            "build the detector with the snapshot's parameters, or start it fresh"
        )


class Parametrised:
    """Constructor arguments kept under their public names, listed in `_param_names`."""

    _param_names: ClassVar[tuple[str, ...]]

    def _params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names}

    def clone(self) -> Self:
        """A fresh instance with the same parameters."""
        return type(self)(**self._params())
