"""Canary verdicts (issue 4): A/A false fails at every look, power, and the cost in replay throughput.

Every simulation feeds a fresh partition's `Canary(CanaryConfig(), keys)` (the defaults: α = 0.05,
500 requests per arm before any verdict, latency tolerance +5%, error-rate tolerance +0.2
points, error rate critical, the model's comparisons judged every 100 of its requests) the keys
of model "m" control v1 and canary v2, their requests alternating, in batches of 100 requests
per arm, and reads `models["m"].comparisons["canary"].verdict` after every batch (a "look"),
up to 20,000 requests per arm. A batch ends at one of the canary's looks, with 100·k requests
per arm; the look inside it (50 more per arm) is not read, but a `fail` stands, so one there
shows at the next read. Latency is lognormal(3.0, 0.3) ms (median 20 ms), errors are
Bernoulli(1%); there are no scores or labels, so the metrics compared are error_rate, latency
(ln ms) and latency_tail (above the control's frozen p95).

- A/A: both arms from the same distribution. A simulation is a false fail if the verdict is
  `fail` at ANY of its 200 looks. Beside it, on the same draws, a Kayenta-style fixed-horizon
  test re-run at every look: Mann-Whitney U on latency, two-sided α = 0.05, `fail` when the
  candidate is significantly higher. Its U at all 200 looks comes from one block-count matrix
  per simulation (the asymptotic formula `scipy.stats.mannwhitneyu` uses, continuity corrected;
  no ties in float draws); it is checked against `scipy.stats.mannwhitneyu` itself on the first
  simulations at every look.
- Power: requests per arm until the verdict is first `fail`, for +10% and +20% latency (the
  candidate's draws ×1.1 / ×1.2), errors 1% → 2%, and p99 +30% with the mean unchanged (see
  `p99_shift`). Capped at 20,000 per arm; a simulation without a fail by then is a miss.
- LLM (issue 16): model "m" logs TTFT (lognormal(ln 300, 0.3) ms), output tokens (lognormal(
  ln 200, 0.5), at least 2) and time per output token (lognormal(ln 30, 0.2) ms); latency is
  TTFT + TPOT·(tokens − 1). "TPOT +30%, answers 20% shorter" must fail within 2,000 requests per
  arm (median); "same speed, answers 30% longer" (end-to-end latency about +30%, which an LLM's
  verdict reports but does not judge) must not fail in ≥ 95% of simulations, up to the cap.
- Speed: `replay` of a 200k-event JSONL file (control/canary of one model) with the default
  config against the same with `canary.enabled: false`; best of 3 alternated passes.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import GENERATOR_START_TIME, parse_args, verdict, write_result
from daemon.config import CanaryConfig, from_mapping
from daemon.ingest.batch import Key, build
from daemon.ingest.events import InferenceEvent
from daemon.monitors.canary import Canary
from daemon.runtime.replay import replay

SEED = 20_240_404
BATCH = 100
MU, SIGMA = 3.0, 0.3  # ln latency_ms
ERROR_RATE = 0.01
ALPHA = 0.05
FALSE_FAIL_TARGET = ALPHA
LATENCY20_TARGET = 2_000  # median requests per arm
ERRORS_TARGET = 5_000
SPEED_TARGET = 0.90
P99_Q, P99_FACTOR = 0.99, 1.3
ARMS = (("control", "1"), ("canary", "2"))
KEYS: list[Key] = [("m", version, variant) for variant, version in ARMS]  # row i: ARMS[i]


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"aa_sims": 50, "max_n": 5_000, "power_sims": 10, "scipy_check_sims": 1, "events": 20_000, "repeats": 1}
    return {"aa_sims": 500, "max_n": 20_000, "power_sims": 100, "scipy_check_sims": 3, "events": 200_000, "repeats": 7}


# -- traffic ----------------------------------------------------------------------------------


def p99_shift() -> tuple[float, float]:
    """(threshold, body factor): draws above the lognormal's p99 are ×1.3, the others ×c, with c
    chosen so that the mean is unchanged. For a lognormal, E[L; L > q] = E[L]·Φ(σ − z) with z
    the standard normal quantile of 0.99, so c = (1 − 1.3·Φ(σ − z)) / (1 − Φ(σ − z))."""
    z = stats.norm.ppf(P99_Q)
    q = math.exp(MU + SIGMA * z)
    top = stats.norm.cdf(SIGMA - z)  # share of the mean above q (2.1% here)
    return q, (1.0 - P99_FACTOR * top) / (1.0 - top)


def draws(rng: np.random.Generator, n: int, scenario: str) -> tuple[np.ndarray, np.ndarray]:
    """Latency (2, n) and error flags (2, n) for control (row 0) and canary (row 1)."""
    lat = rng.lognormal(MU, SIGMA, size=(2, n))
    err = rng.random((2, n)) < ERROR_RATE
    if scenario == "latency +10%":
        lat[1] *= 1.1
    elif scenario == "latency +20%":
        lat[1] *= 1.2
    elif scenario == "errors 1% -> 2%":
        err[1] = rng.random(n) < 2 * ERROR_RATE
    elif scenario == "p99 +30%, mean unchanged":
        q, body = p99_shift()
        lat[1] = np.where(lat[1] > q, lat[1] * P99_FACTOR, lat[1] * body)
    elif scenario == WIDER:
        # Median ×0.92 with the mean unchanged: ln-sd σ' with σ'² = σ² − 2 ln 0.92.
        lat[1] = rng.lognormal(MU + math.log(0.92), math.sqrt(SIGMA**2 - 2 * math.log(0.92)), size=n)
    elif scenario != "A/A":
        raise ValueError(scenario)
    return lat, err


def llm_draws(rng: np.random.Generator, n: int, scenario: str) -> dict[str, np.ndarray]:
    """TTFT, time per output token, output tokens and latency (each (2, n)) of an LLM's arms."""
    ttft = rng.lognormal(math.log(300), 0.3, size=(2, n))
    tpot = rng.lognormal(math.log(30), 0.2, size=(2, n))
    tokens = np.maximum(2, np.round(rng.lognormal(math.log(200), 0.5, size=(2, n))))
    if scenario == LLM_SLOWER:
        tpot[1] *= 1.3
        tokens[1] = np.maximum(2, np.round(tokens[1] * 0.8))
    elif scenario == LLM_LONGER:
        tokens[1] = np.round(tokens[1] * 1.3)
    elif scenario != "A/A":
        raise ValueError(scenario)
    return {"ttft_ms": ttft, "tpot_ms": tpot, "tokens_out": tokens, "latency_ms": ttft + tpot * (tokens - 1)}


def verdicts(
    lat: np.ndarray,
    err: np.ndarray,
    stop_at_fail: bool,
    settings: CanaryConfig | None = None,
    llm: dict[str, np.ndarray] | None = None,
) -> tuple[list[str], list[str]]:
    """The canary's verdict after every batch, and the reasons of the first fail. `llm`: the LLM
    measures of `llm_draws` (latency among them replaces `lat`)."""
    keys = list(KEYS)
    canary = Canary(settings or CanaryConfig(), keys)
    canary.add_rows(len(keys))
    n = lat.shape[1]
    # The arms' requests alternate: request 2i is control's i-th, 2i + 1 the canary's.
    if llm is not None:
        lat = llm["latency_ms"]
    extra = {k: v.T.ravel().tolist() for k, v in (llm or {}).items() if k != "latency_ms"}
    lat_l = lat.T.ravel().tolist()
    status = np.where(err.T.ravel(), "error", "ok").tolist()
    rows = np.tile(np.arange(len(ARMS), dtype=np.int64), BATCH)
    out: list[str] = []
    reasons: list[str] = []
    for lo in range(0, 2 * n, 2 * BATCH):
        hi = lo + 2 * BATCH
        events = [
            InferenceEvent(
                request_id="r",
                model="m",
                variant=ARMS[i % 2][0],
                version=ARMS[i % 2][1],
                latency_ms=x,
                status=s,
                **{k: v[i] for k, v in extra.items()},
            )
            for i, x, s in zip(range(lo, hi), lat_l[lo:hi], status[lo:hi], strict=True)
        ]
        canary.update(rows, build(events, [0] * len(events), list(range(lo, hi)), [None] * len(events)))
        comp = canary.models["m"].comparisons["canary"]
        out.append(comp.verdict)
        if comp.verdict == "fail":
            if not reasons:
                reasons = list(comp.reasons)
            if stop_at_fail:
                break
    return out, reasons


# -- Kayenta-style: Mann-Whitney U re-run at every look -----------------------------------


def mwu_every_look(cand: np.ndarray, ctrl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p and U (candidate above control) of Mann-Whitney U on the first k·BATCH of
    each arm, for every k. M[a, b] counts pairs (control in block a) < (candidate in block b);
    the look at k blocks sums M[:k, :k]. The p-value is scipy's asymptotic one (no ties)."""
    k = len(cand) // BATCH
    blocks = np.sort(ctrl.reshape(k, BATCH), axis=1)
    m = np.empty((k, k), dtype=np.int64)
    for a in range(k):
        m[a] = np.searchsorted(blocks[a], cand).reshape(k, BATCH).sum(axis=1)
    u1 = np.diagonal(m.cumsum(axis=0).cumsum(axis=1)).astype(float)
    n = BATCH * np.arange(1, k + 1, dtype=float)
    mu = n * n / 2
    s = np.sqrt(n * n * (2 * n + 1) / 12)
    u = np.maximum(u1, n * n - u1)
    p = np.clip(2 * stats.norm.sf((u - mu - 0.5) / s), 0.0, 1.0)
    return p, u1


def kayenta_fails(cand: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Per look: candidate latency significantly higher (two-sided α, candidate above)."""
    p, u1 = mwu_every_look(cand, ctrl)
    n = BATCH * np.arange(1, len(p) + 1, dtype=float)
    return (p < ALPHA) & (u1 > n * n / 2)


def scipy_check(cand: np.ndarray, ctrl: np.ndarray) -> float:
    """Largest |p − scipy's p| over every look of one simulation."""
    p, _ = mwu_every_look(cand, ctrl)
    ref = [
        stats.mannwhitneyu(cand[:n], ctrl[:n], alternative="two-sided").pvalue
        for n in range(BATCH, len(cand) + 1, BATCH)
    ]
    return float(np.max(np.abs(p - np.asarray(ref))))


# -- A/A -------------------------------------------------------------------------------------


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(stats.beta.ppf(ALPHA / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - ALPHA / 2, k + 1, n - k))
    return lo, hi


def aa(size: dict[str, int]) -> dict[str, Any]:
    sims, n = size["aa_sims"], size["max_n"]
    looks = n // BATCH
    checkpoints = [c for c in (1_000, 2_000, 5_000, 10_000, 20_000) if c <= n]
    ours_first_fail: list[int | None] = []
    kay_first_fail: list[int | None] = []
    kay_final_fail = 0
    first_pass: list[int] = []
    finals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    scipy_err = 0.0
    t_ours = t_kay = 0.0
    for sim in range(sims):
        rng = np.random.default_rng([SEED, 0, sim])
        lat, err = draws(rng, n, "A/A")
        t0 = time.perf_counter()
        vs, why = verdicts(lat, err, stop_at_fail=False)
        t1 = time.perf_counter()
        kf = kayenta_fails(lat[1], lat[0])
        t_kay += time.perf_counter() - t1
        t_ours += t1 - t0
        if sim < size["scipy_check_sims"]:
            scipy_err = max(scipy_err, scipy_check(lat[1], lat[0]))
        ours_first_fail.append(BATCH * (vs.index("fail") + 1) if "fail" in vs else None)
        kay_first_fail.append(BATCH * (int(np.argmax(kf)) + 1) if kf.any() else None)
        kay_final_fail += bool(kf[-1])
        if "pass" in vs:
            first_pass.append(BATCH * (vs.index("pass") + 1))
        finals[vs[-1]] += 1
        for r in why:
            reasons[r.split(" ", 1)[0]] += 1

    def by(first: list[int | None], at: int) -> float:
        return sum(1 for f in first if f is not None and f <= at) / sims

    ours_k = sum(f is not None for f in ours_first_fail)
    kay_k = sum(f is not None for f in kay_first_fail)
    rate = ours_k / sims
    return {
        "simulations": sims,
        "looks": looks,
        "look_every_requests_per_arm": BATCH,
        "max_requests_per_arm": n,
        "ours": {
            "false_fails": ours_k,
            "false_fail_rate": rate,
            "false_fail_rate_ci95": clopper_pearson(ours_k, sims),
            "first_fail_requests": sorted(f for f in ours_first_fail if f is not None),
            "failing_metrics_at_first_fail": dict(reasons),
            "cumulative_false_fail_rate": {str(c): by(ours_first_fail, c) for c in checkpoints},
            "final_verdicts": dict(finals),
            "sims_reaching_pass": len(first_pass),
            "first_pass_requests_median": float(np.median(first_pass)) if first_pass else None,
            "seconds": t_ours,
            "target": FALSE_FAIL_TARGET,
            "pass": rate <= FALSE_FAIL_TARGET,
        },
        "kayenta_style": {
            "test": "scipy.stats.mannwhitneyu on latency, two-sided alpha 0.05, fail if candidate higher",
            "simulations": sims,
            "looks": looks,
            "note": "same draws and the same looks as ours (every 100 requests per arm); U from block counts, "
            "checked against scipy.stats.mannwhitneyu at every look of the first simulations",
            "scipy_check_simulations": size["scipy_check_sims"],
            "scipy_check_max_abs_p_difference": scipy_err,
            "false_fails_any_look": kay_k,
            "false_fail_rate_any_look": kay_k / sims,
            "false_fail_rate_any_look_ci95": clopper_pearson(kay_k, sims),
            "false_fail_rate_final_look_only": kay_final_fail / sims,
            "cumulative_false_fail_rate": {str(c): by(kay_first_fail, c) for c in checkpoints},
            "seconds": t_kay,
        },
    }


# -- power -----------------------------------------------------------------------------------

# The wording: a median 8% better and the mean unchanged (a wider lognormal: p99 +49%).
WIDER = "median -8%, mean unchanged"
SCENARIOS = ("latency +10%", "latency +20%", "errors 1% -> 2%", "p99 +30%, mean unchanged", WIDER)
# Not a target: the same error scenario with error_rate_tolerance 0, to show what the tolerance costs.
ZERO_TOL = "errors 1% -> 2%, error_rate_tolerance 0"
P99_TARGET = 5_000
TARGETS = {"latency +20%": LATENCY20_TARGET, "errors 1% -> 2%": ERRORS_TARGET, "p99 +30%, mean unchanged": P99_TARGET}
LLM_SLOWER, LLM_LONGER = "LLM: TPOT +30%, answers 20% shorter", "LLM: same speed, answers 30% longer"
LLM_SLOWER_TARGET, LLM_LONGER_TARGET = 2_000, 0.95  # median requests per arm; share without a fail


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank (inverted CDF) quantile; misses are inf, so a quantile that lands on one is inf."""
    return float(np.percentile(np.asarray(values, dtype=float), q, method="inverted_cdf"))


def _power_row(hits: list[float], reasons: Counter[str], cap: int, t0: float) -> tuple[float, dict[str, Any]]:
    """The median requests per arm to the first fail (inf: a miss), and a scenario's row."""
    med, p90 = quantile(hits, 50), quantile(hits, 90)
    return med, {
        "simulations": len(hits),
        "cap_requests_per_arm": cap,
        "detected": sum(math.isfinite(h) for h in hits),
        "misses": sum(not math.isfinite(h) for h in hits),
        "median_requests_per_arm": med if math.isfinite(med) else None,
        "p90_requests_per_arm": p90 if math.isfinite(p90) else None,
        "failing_metrics_at_first_fail": dict(reasons),
        "seconds": time.perf_counter() - t0,
    }


def power(size: dict[str, int]) -> dict[str, Any]:
    sims, n = size["power_sims"], size["max_n"]
    out: dict[str, Any] = {}
    for i, scenario in enumerate((*SCENARIOS, ZERO_TOL), start=1):
        settings = CanaryConfig(error_rate_tolerance=0.0) if scenario == ZERO_TOL else CanaryConfig()
        t0 = time.perf_counter()
        hits: list[float] = []
        reasons: Counter[str] = Counter()
        for sim in range(sims):
            rng = np.random.default_rng([SEED, i, sim])
            lat, err = draws(rng, n, "errors 1% -> 2%" if scenario == ZERO_TOL else scenario)
            vs, why = verdicts(lat, err, stop_at_fail=True, settings=settings)
            hits.append(BATCH * len(vs) if vs[-1] == "fail" else math.inf)
            for r in why:
                reasons[r.split(" ", 1)[0]] += 1
        med, row = _power_row(hits, reasons, n, t0)
        if scenario in TARGETS:
            row["target_median"] = TARGETS[scenario]
            row["pass"] = med <= TARGETS[scenario]
        out[scenario] = row
    for i, scenario in enumerate((LLM_SLOWER, LLM_LONGER), start=10):
        t0 = time.perf_counter()
        hits = []
        reasons: Counter[str] = Counter()
        for sim in range(sims):
            rng = np.random.default_rng([SEED, i, sim])
            llm = llm_draws(rng, n, scenario)
            err = rng.random((2, n)) < ERROR_RATE
            vs, why = verdicts(llm["latency_ms"], err, stop_at_fail=True, llm=llm)
            hits.append(BATCH * len(vs) if vs[-1] == "fail" else math.inf)
            for r in why:
                reasons[r.split(" ", 1)[0]] += 1
        med, row = _power_row(hits, reasons, n, t0)
        no_fail = row["misses"] / sims
        if scenario == LLM_SLOWER:
            row |= {"target_median": LLM_SLOWER_TARGET, "pass": med <= LLM_SLOWER_TARGET}
        else:
            row |= {
                "share_without_fail": no_fail,
                "target_share": LLM_LONGER_TARGET,
                "pass": no_fail >= LLM_LONGER_TARGET,
            }
        out[scenario] = row
    q, body = p99_shift()
    out["p99 +30%, mean unchanged"]["construction"] = {
        "threshold_ms": q,
        "above_threshold_factor": P99_FACTOR,
        "below_threshold_factor": body,
    }
    return out


# -- speed -----------------------------------------------------------------------------------


def write_events(path: Path, n: int, seed: int = 11) -> None:
    """`n` events of model "m", alternating control v1 / canary v2 (same distributions)."""
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(MU, SIGMA, n).round(3).tolist()
    err = (rng.random(n) < ERROR_RATE).tolist()
    score = rng.random(n).round(5).tolist()
    with path.open("w") as f:
        for i in range(n):
            variant, version = ARMS[i % 2]
            ev = {
                "request_id": f"r-{i}",
                "model": "m",
                "version": version,
                "variant": variant,
                "timestamp": round(GENERATOR_START_TIME + i / 1000, 3),
                "latency_ms": lat[i],
                "status": "error" if err[i] else "ok",
                "score": score[i],
            }
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")


def speed(size: dict[str, int]) -> dict[str, Any]:
    n, repeats = size["events"], size["repeats"]
    with_canary, without = from_mapping({}), from_mapping({"canary": {"enabled": False}})
    on: list[float] = []
    off: list[float] = []
    timeline: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        write_events(path, n)
        for _ in range(repeats):  # alternated, so that a change in machine load hits both
            t0 = time.perf_counter()
            replay(path, without)
            off.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = replay(path, with_canary)
            on.append(time.perf_counter() - t0)
            timeline = report["canary"]
    ratio = min(off) / min(on)
    return {
        "events": n,
        "passes": repeats,
        "replay_without_canary_per_s": n / min(off),
        "replay_with_canary_per_s": n / min(on),
        "ratio": ratio,
        "target": SPEED_TARGET,
        "pass": ratio >= SPEED_TARGET,
        "without_canary_seconds": off,
        "with_canary_seconds": on,
        "canary_timeline_entries": len(timeline),
        "final_canary_verdict": timeline[-1]["verdict"] if timeline else None,
    }


# -- summary ---------------------------------------------------------------------------------


def fmt_n(x: float | None) -> str:
    return ">cap" if x is None else f"{x:,.0f}"


def summary_line(a: dict[str, Any], pw: dict[str, Any], sp: dict[str, Any]) -> str:
    ours, kay = a["ours"], a["kayenta_style"]

    def mp(s: str) -> str:
        r = pw[s]
        miss = f" ({r['misses']}/{r['simulations']} missed)" if r["misses"] else ""
        return f"{fmt_n(r['median_requests_per_arm'])}/{fmt_n(r['p90_requests_per_arm'])}{miss}"

    l20, e2, p99 = pw["latency +20%"], pw["errors 1% -> 2%"], pw["p99 +30%, mean unchanged"]
    slower, longer = pw[LLM_SLOWER], pw[LLM_LONGER]
    return (
        f"canary: A/A false fails {ours['false_fail_rate']:.1%} (≤5% {verdict(ours['pass'])}) "
        f"vs Kayenta-style {kay['false_fail_rate_any_look']:.0%}; "
        f"power median/p90 requests per arm +10% {mp('latency +10%')}, "
        f"+20% {mp('latency +20%')} (≤2,000 {verdict(l20['pass'])}), "
        f"errors 1→2% {mp('errors 1% -> 2%')} (≤5,000 {verdict(e2['pass'])}), "
        f"p99+30% {mp('p99 +30%, mean unchanged')} (≤5,000 {verdict(p99['pass'])}), "
        f"median -8% same mean {mp(WIDER)}; "
        f"LLM TPOT+30% shorter answers {mp(LLM_SLOWER)} (≤2,000 {verdict(slower['pass'])}), "
        f"longer answers no fail {longer['share_without_fail']:.0%} (≥95% {verdict(longer['pass'])}); "
        f"replay with canary {sp['ratio']:.0%} of without (≥90% {verdict(sp['pass'])})"
    )


def main() -> None:
    args = parse_args(__doc__)
    size = sizes(args.quick)
    t0 = time.perf_counter()
    a = aa(size)
    print(f"A/A {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    t0 = time.perf_counter()
    pw = power(size)
    print(f"power {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    sp = speed(size)
    body = {
        "setup": {
            "canary_config": CanaryConfig().model_dump(mode="json"),
            "latency": f"lognormal(mu={MU}, sigma={SIGMA}) ms",
            "error_rate": ERROR_RATE,
            "batch_requests_per_arm": BATCH,
            "seed": SEED,
            "sizes": size,
        },
        "aa": a,
        "power": pw,
        "speed": sp,
    }
    write_result("canary", args.quick, body, summary_line(a, pw, sp))


if __name__ == "__main__":
    main()
