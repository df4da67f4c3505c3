"""Seeded synthetic inference traffic with a change plan, for the demo, tests and benchmarks.

A change is written as space-separated key=value pairs, for example::

    after=3m model=fraud-detector feature=f0 shift=1     # f0 moves by 1 sd from minute 3
    after=0 model=fraud-detector variant=canary latency=+20%
    after=90s model=recsys-ranker error_rate=0.05
    after=0 model=chat-llm variant=canary tpot=+30% tokens=-20%   # an LLM: slower per token, shorter

Time is simulated: event i happens at start + i / rate, so a file and a live run agree.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

N_NUMERIC = 6
CATEGORIES = ("a", "b", "c", "d")
ERROR_TYPES = ("timeout", "oom", "bad_input")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# Simulated seconds between an event and its label.
LABEL_DELAY_S = 5.0


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 3m, 1.5h or plain seconds")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Change:
    after_s: float = 0.0
    model: str | None = None
    variant: str | None = None
    feature: str | None = None
    shift_sd: float = 0.0
    latency_factor: float = 1.0
    error_rate: float | None = None
    # LLM models: time per output token and output length, as factors.
    tpot_factor: float = 1.0
    tokens_factor: float = 1.0

    def applies(self, t: float, model: str, variant: str) -> bool:
        return (
            t >= self.after_s
            and (self.model is None or self.model == model)
            and (self.variant is None or self.variant == variant)
        )


def parse_change(spec: str) -> Change:
    """Parse `after=3m model=m feature=f0 shift=1` and friends; ValueError names the bad part."""
    fields: dict[str, Any] = {}
    for part in spec.split():
        if "=" not in part:
            raise ValueError(f"change {spec!r}: {part!r} is not key=value")
        k, v = part.split("=", 1)
        if k == "after":
            fields["after_s"] = parse_duration(v)
        elif k in ("model", "variant", "feature"):
            fields[k] = v
        elif k == "shift":
            fields["shift_sd"] = float(v.removesuffix("sd"))
        elif k in ("latency", "tpot", "tokens"):
            fields[f"{k}_factor"] = 1 + float(v.rstrip("%")) / 100 if v.endswith("%") else float(v)
        elif k == "error_rate":
            fields["error_rate"] = float(v)
        else:
            raise ValueError(
                f"change {spec!r}: unknown key {k!r}; use after, model, variant, feature, shift, latency, "
                "error_rate, tpot, tokens"
            )
    if "feature" in fields and "shift_sd" not in fields:
        raise ValueError(f"change {spec!r}: feature= needs shift=<sd>")
    return Change(**fields)


def parse_model(spec: str) -> tuple[str, tuple[str, ...]]:
    """`name` or `name:variant1,variant2`."""
    name, _, variants = spec.partition(":")
    vs = tuple(v for v in variants.split(",") if v) if variants else ()
    if not name:
        raise ValueError(f"bad model spec {spec!r}: use name or name:variant,variant")
    return name, vs


@dataclass
class _ModelProfile:
    latency_median_ms: float
    latency_sigma: float
    error_rate: float
    means: list[float]
    sds: list[float]
    weights: list[float]
    cat_probs: list[float]


@dataclass(frozen=True)
class TrafficSpec:
    models: Sequence[tuple[str, tuple[str, ...]]] = (
        ("fraud-detector", ("control", "canary")),
        ("recsys-ranker", ()),
    )
    rate: float = 200.0
    duration_s: float = 60.0
    seed: int = 1
    changes: Sequence[Change] = field(default_factory=tuple)
    start_time: float | None = None
    # Share of traffic that a variant named "canary" gets; other variants split the rest.
    canary_share: float = 0.25
    # Models that serve an LLM: TTFT, prompt and output tokens, time per output token, finish
    # reason; latency is TTFT + TPOT·(tokens − 1); no score, prediction or label.
    llm_models: Sequence[str] = ()

    @property
    def n_events(self) -> int:
        return int(self.rate * self.duration_s)


def encode(ev: dict[str, Any]) -> tuple[bytes, bytes]:
    """An event or label as a Kafka (key, value): keyed by model, as the scale-out docs ask."""
    return ev["model"].encode(), json.dumps(ev, separators=(",", ":")).encode()


class TrafficGenerator:
    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._profiles = {name: self._profile(i) for i, (name, _) in enumerate(spec.models)}
        self.start_time = spec.start_time if spec.start_time is not None else time.time()
        # Its own stream, so that asking for labels leaves the events unchanged.
        self._label_rng = random.Random(spec.seed * 104_729 + 1)

    def _profile(self, i: int) -> _ModelProfile:
        r = random.Random(self.spec.seed * 7919 + i)
        return _ModelProfile(
            latency_median_ms=r.uniform(15, 60),
            latency_sigma=r.uniform(0.25, 0.45),
            error_rate=0.01,
            means=[r.uniform(-2, 2) for _ in range(N_NUMERIC)],
            sds=[r.uniform(0.5, 3) for _ in range(N_NUMERIC)],
            weights=[r.uniform(-1, 1) for _ in range(N_NUMERIC)],
            cat_probs=[0.4, 0.3, 0.2, 0.1],
        )

    def logit(self, model: str) -> tuple[list[float], float]:
        """`model`'s log-odds before their noise as weights and a bias over f0..f5: its score is
        sigmoid(x @ weights + bias + N(0, 0.5)), its prediction whether the score passes 0.5."""
        p = self._profiles[model]
        weights = [w / sd for w, sd in zip(p.weights, p.sds, strict=True)]
        return weights, -sum(w * m for w, m in zip(weights, p.means, strict=True))

    def _pick_variant(self, variants: tuple[str, ...]) -> str | None:
        if not variants:
            return None
        if "canary" in variants and len(variants) > 1:
            if self._rng.random() < self.spec.canary_share:
                return "canary"
            others = [v for v in variants if v != "canary"]
            return others[self._rng.randrange(len(others))]
        return variants[self._rng.randrange(len(variants))]

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self._rng
        spec = self.spec
        for i in range(spec.n_events):
            t = i / spec.rate
            name, variants = spec.models[rng.randrange(len(spec.models))]
            variant = self._pick_variant(variants)
            prof = self._profiles[name]
            active = [c for c in spec.changes if c.applies(t, name, variant or "default")]
            lat_factor = math.prod(c.latency_factor for c in active)
            err_rate = next((c.error_rate for c in reversed(active) if c.error_rate is not None), prof.error_rate)
            shifts = {c.feature: c.shift_sd for c in active if c.feature}
            feats: dict[str, Any] = {}
            z = 0.0
            for j in range(N_NUMERIC):
                fname = f"f{j}"
                x = rng.gauss(prof.means[j] + shifts.get(fname, 0.0) * prof.sds[j], prof.sds[j])
                z += prof.weights[j] * (x - prof.means[j]) / prof.sds[j]
                feats[fname] = round(x, 5)
            if rng.random() < 0.005:
                feats["f3"] = None
            feats["f6"] = rng.choices(CATEGORIES, prof.cat_probs)[0]
            feats["f7"] = rng.random() < 0.3
            if name in spec.llm_models:
                yield self._llm_event(i, t, name, variant, feats, active, err_rate)
                continue
            score = 1 / (1 + math.exp(-(z + rng.gauss(0, 0.5))))
            latency = rng.lognormvariate(math.log(prof.latency_median_ms), prof.latency_sigma) * lat_factor
            fields = {"latency_ms": round(latency, 3), "score": round(score, 5), "prediction": int(score > 0.5)}
            yield self._event(i, t, name, variant, fields | {"features": feats}, err_rate)

    def _llm_event(
        self, i: int, t: float, name: str, variant: str | None, feats: dict[str, Any], active: list[Change], err: float
    ) -> dict[str, Any]:
        """An LLM request: TTFT ~250 ms, ~30 ms per output token, ~150 output tokens, stopped by the
        length cap (512) one time in a few hundred."""
        rng = self._rng
        tokens = min(
            512, max(2, round(rng.lognormvariate(math.log(150), 0.6) * math.prod(c.tokens_factor for c in active)))
        )
        ttft = rng.lognormvariate(math.log(250), 0.3) * math.prod(c.latency_factor for c in active)
        tpot = rng.lognormvariate(math.log(30), 0.2) * math.prod(c.tpot_factor for c in active)
        fields = {
            "latency_ms": round(ttft + tpot * (tokens - 1), 3),
            "ttft_ms": round(ttft, 3),
            "tokens_in": max(1, round(rng.lognormvariate(math.log(400), 0.5))),
            "tokens_out": tokens,
            "finish_reason": "length" if tokens == 512 else "stop",
        }
        return self._event(i, t, name, variant, fields | {"features": feats}, err)

    def _event(
        self, i: int, t: float, name: str, variant: str | None, fields: dict[str, Any], err: float
    ) -> dict[str, Any]:
        """The event of request i at simulated time t: its key, `fields`, and an error with
        probability `err` (drawn last)."""
        ev: dict[str, Any] = {
            "request_id": f"{self.spec.seed}-{i}",
            "model": name,
            "version": "2" if variant == "canary" else "1",
            "timestamp": round(self.start_time + t, 3),
            **fields,
            "status": "ok",
        }
        if variant is not None:
            ev["variant"] = variant
        if self._rng.random() < err:
            ev["status"] = "error"
            ev["error_type"] = ERROR_TYPES[self._rng.randrange(len(ERROR_TYPES))]
        return ev

    def label(self, ev: dict[str, Any]) -> dict[str, Any]:
        """Ground truth for `ev`, as a labels topic would carry it LABEL_DELAY_S later.

        The truth is 1 with probability `score`: the model is calibrated, so the label-free
        accuracy estimate should track the realized accuracy. Call it once per event, in order.
        """
        truth = int(self._label_rng.random() < ev["score"])
        ts = round(ev["timestamp"] + LABEL_DELAY_S, 3)
        return {"request_id": ev["request_id"], "model": ev["model"], "label": truth, "timestamp": ts}

    def encoded(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs: keyed by model so each model's state lives in one partition."""
        return map(encode, self.events())

    def paced_events(self) -> Iterator[dict[str, Any]]:
        """events(), released no faster than `rate` per second of wall time."""
        t0 = time.monotonic()
        for i, ev in enumerate(self.events()):
            ahead = i / self.spec.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
            yield ev

    def paced(self) -> Iterator[tuple[bytes, bytes]]:
        """encoded(), released no faster than `rate` per second of wall time."""
        return map(encode, self.paced_events())
