"""Scrape cost with 1,000 keys: /metrics latency over HTTP, and peak RSS.

A `Daemon` (limits.max_keys = 1000, HTTP on 127.0.0.1, port 0) is fed events for 1,000
distinct (model, version, variant) keys through `daemon.pipeline.process`: 8 features, a
score, a 0/1 prediction, ~5% errors of three types, as the generator makes them. Only its
HTTP server is started, no Kafka. Then /metrics is fetched with urllib, one request at a
time, as Prometheus would:

- idle: no ingestion, no compression. This is the figure the target is checked on.
- gzip: `Accept-Encoding: gzip`, which Prometheus sends on every scrape.
- under ingest: while a second thread keeps feeding the same keys through the pipeline,
  as the daemon's loop does; scrapes contend for the GIL and the pipeline lock. Issue 13's
  target: p99 < 100 ms here (scrapes back to back), and the ingest rate with a scrape every
  second at least 90% of the rate without (alternating stretches, medians). The stretches start
  once the keys' drift references are full and calibrated (99% of the streams): the first fill
  at 1,000 keys sets off 10,000 calibrations at once, on the calibration thread, which would
  swing the rate of both kinds of stretch far more than a scrape does; the time it took is
  reported.

The render alone (`Daemon.exposition.render()`, no HTTP) is timed too, and profiled when
the p99 misses, so that a miss comes with its reasons.

Peak RSS is measured in fresh interpreters: one that only populates (the target), one that
populates and renders one scrape, and one that only imports `daemon.runtime.app` (the baseline).
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import json
import math
import pstats
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from _common import (
    REPO_ROOT,
    keyed_events,
    latency_stats,
    parse_args,
    peak_rss_mb,
    percentile,
    run_children_json,
    verdict,
    write_result,
)

NAME = "scrape"
KEYS = 1000
TARGET_P99_MS = 100.0
TARGET_INGEST_RATIO = 0.9
TARGET_RSS_MB = 150.0
BATCH_SIZE = 2000
WARMUP_SCRAPES = 2
# How long the ingest ratio waits for the references to fill and calibrate (see the docstring).
SETTLE_S = 240.0
CHILD_MODES = ("bare-import", "populate", "populate-scrape")
GZIP = {"Accept-Encoding": "gzip"}


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scrapes", type=int, help="timed idle scrapes (default 200; 10 with --quick)")
    p.add_argument("--events-per-key", type=int, help="events fed per key (default 30; 10 with --quick)")
    p.add_argument(
        "--profile", action="store_true", help="profile one scrape even when the target is met, or in --quick"
    )
    # Internal: the RSS measurements run this script again in a fresh interpreter.
    p.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)


def build_daemon() -> Any:
    from daemon.config import from_mapping
    from daemon.runtime.app import Daemon

    config = from_mapping({"http": {"host": "127.0.0.1", "port": 0}, "limits": {"max_keys": KEYS}})
    return Daemon(config)


def batches_of(values: list[bytes], offset0: int = 0) -> list[list[Any]]:
    """Polls of BATCH_SIZE records of one partition, as the Kafka source hands them over."""
    from daemon.ingest.sources import Chunk

    return [
        [Chunk("inference-logs", 0, range(offset0 + i, offset0 + i + len(vs)), None, None, vs)]
        for i in range(0, len(values), BATCH_SIZE)
        for vs in [values[i : i + BATCH_SIZE]]
    ]


def populate(daemon: Any, per_key: int) -> dict[str, Any]:
    values = keyed_events(KEYS, per_key)
    t0 = time.perf_counter()
    for batch in batches_of(values):
        daemon.pipeline.process(batch)
    seconds = time.perf_counter() - t0
    p = daemon.pipeline
    if len(p.router) != KEYS or p.overflow.counts or p.totals().invalid_records:
        raise RuntimeError(
            f"populate: {len(p.router)} keys, overflow {p.overflow.counts}, invalid {p.totals().invalid_records}; "
            f"want {KEYS} clean"
        )
    return {"events": len(values), "keys": len(p.router), "seconds": round(seconds, 3)}


def child(mode: str, per_key: int) -> None:
    """One RSS measurement in this fresh interpreter; prints one JSON line."""
    import daemon.runtime.app  # noqa: F401  (the baseline: what importing the daemon costs)

    out: dict[str, Any] = {"mode": mode}
    if mode != "bare-import":
        d = build_daemon()
        out["populate"] = populate(d, per_key)
        if mode == "populate-scrape":
            out["scrape_bytes"] = len(d.exposition.render())
        # No d.http.stop(): HttpServer.stop() blocks forever when start() was never called
        # (socketserver's shutdown() waits for serve_forever); the socket dies with the process.
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out))


def scrape(url: str, headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
    return time.perf_counter() - t0, body


def series_count(body: bytes) -> dict[str, int]:
    lines = body.decode().splitlines()
    samples = [ln for ln in lines if ln and not ln.startswith("#")]
    families = [ln for ln in lines if ln.startswith("# TYPE ")]
    return {"samples": len(samples), "families": len(families), "bytes": len(body)}


def profile_render(render: Callable[[], bytes], top: int = 20) -> list[dict[str, Any]]:
    """cProfile of one render (what the HTTP handler calls), top functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    render()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.split("site-packages/")[-1].replace(str(REPO_ROOT) + "/", "")
        rows.append(
            {
                "function": f"{short}:{line}({func})",
                "calls": nc,
                "own_ms": round(tt * 1000, 2),
                "cumulative_ms": round(ct * 1000, 2),
            }
        )
    rows.sort(key=lambda r: r["own_ms"], reverse=True)
    return rows[:top]


def render_no_http(render: Callable[[], bytes], url: str, reps: int) -> dict[str, float]:
    """The render alone, and gzip level 1 (what the handler adds for Prometheus), interleaved with
    HTTP scrapes so that the difference is HTTP's share and not the VM's mood of the moment."""
    render_s, gzip_s, http_s = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        body = render()
        render_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gzip.compress(body, 1)
        gzip_s.append(time.perf_counter() - t0)
        http_s.append(scrape(url)[0])
    return {
        "reps": reps,
        "render_p50_ms": round(percentile(render_s, 50) * 1000, 2),
        "render_min_ms": round(min(render_s) * 1000, 2),
        "gzip_level1_p50_ms": round(percentile(gzip_s, 50) * 1000, 2),
        "http_scrape_p50_ms_interleaved": round(percentile(http_s, 50) * 1000, 2),
        "http_share_p50_ms": round((percentile(http_s, 50) - percentile(render_s, 50)) * 1000, 2),
    }


def scrapes(url: str, n: int, budget_s: float, headers: dict[str, str] | None = None) -> tuple[list[float], bytes]:
    """Up to n scrapes one after another, stopping early once budget_s is spent (at least 5)."""
    latencies: list[float] = []
    body = b""
    t0 = time.perf_counter()
    while len(latencies) < n and (len(latencies) < 5 or time.perf_counter() - t0 < budget_s):
        s, body = scrape(url, headers)
        latencies.append(s)
    return latencies, body


def scrapes_all_keys_changed(daemon: Any, url: str, n: int) -> list[float]:
    """Scrapes each preceded (untimed) by one event for every key, so no key's lines are cached:
    the render cost of a fleet where every key saw traffic since the last scrape."""
    touch = batches_of(keyed_events(KEYS, 1, seed=9), offset0=10**8)
    latencies = []
    for _ in range(n):
        for batch in touch:
            daemon.pipeline.process(batch)
        latencies.append(scrape(url)[0])
    return latencies


def scrapes_under_ingest(
    daemon: Any, url: str, n: int, budget_s: float, per_key: int, rounds: int, stretch_s: float
) -> dict[str, Any]:
    """Scrape while another thread feeds the pipeline non-stop, as the daemon's loop would."""
    batches = batches_of(keyed_events(KEYS, per_key, seed=8), offset0=10**9)
    stop = threading.Event()
    fed = [0]

    def ingest() -> None:
        while not stop.is_set():
            for batch in batches:
                if stop.is_set():
                    return
                daemon.pipeline.process(batch)
                fed[0] += sum(len(chunk.values) for chunk in batch)

    worker = threading.Thread(target=ingest, name="ingest", daemon=True)
    worker.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    fed0 = fed[0]
    latencies, _ = scrapes(url, n, budget_s)
    wall = time.perf_counter() - t0
    fed_during = fed[0] - fed0
    settle0 = time.perf_counter()
    while time.perf_counter() - settle0 < SETTLE_S and not _settled(daemon.pipeline):
        time.sleep(0.5)
    settled_after = time.perf_counter() - settle0
    # Ingest rate with one scrape a second against none, in alternating stretches.
    with_scrapes: list[float] = []
    without: list[float] = []
    paced: list[float] = []
    for _ in range(rounds):
        for scraping, rates in ((False, without), (True, with_scrapes)):
            f0, s0 = fed[0], time.perf_counter()
            while time.perf_counter() - s0 < stretch_s:
                if scraping:
                    paced.append(scrape(url)[0])
                    time.sleep(max(0.0, 1.0 - (time.perf_counter() - s0) % 1.0))
                else:
                    time.sleep(0.1)
            rates.append((fed[0] - f0) / (time.perf_counter() - s0))
    stop.set()
    worker.join()
    ratio = percentile(with_scrapes, 50) / percentile(without, 50)
    return {
        **latency_stats(latencies),
        "ingest_events_per_s_during": round(fed_during / wall),
        "ingest_events_per_s_scraped_every_second": [round(r) for r in with_scrapes],
        "ingest_events_per_s_not_scraped": [round(r) for r in without],
        "ingest_ratio_scraped_over_not": round(ratio, 3),
        "scrape_every_second": latency_stats(paced),
        "references_settled_after_s": round(settled_after, 1),
        "settled": _settled(daemon.pipeline),
    }


def _settled(pipeline: Any) -> bool:
    """All but 1% of the drift streams past their reference and calibration."""
    counts = [s.drift.states() for s in pipeline.partitions.values() if s.drift is not None]
    waiting = sum(c["reference"] + c["calibrating"] for c in counts)
    return bool(counts) and waiting <= sum(sum(c.values()) for c in counts) // 100


def main() -> None:
    args = parse_args(__doc__, _add_args)
    per_key = args.events_per_key or (10 if args.quick else 30)
    if args.child:
        child(args.child, per_key)
        return
    # The issue asks for >= 200 idle scrapes. The side scenarios stop at a count or a time
    # budget, whichever comes first, so a slow exposition cannot push the run past ~3 minutes.
    n_idle = args.scrapes or (20 if args.quick else 200)
    n_other, budget_s = (10, 4.0) if args.quick else (100, 30.0)

    # Peak RSS first, in fresh interpreters side by side (RSS does not care about CPU contention,
    # and the timed scrapes below should not share the CPUs with them).
    rss_bare, rss_pop, rss_pop_scrape = run_children_json(
        [[__file__, "--child", mode, "--events-per-key", str(per_key)] for mode in CHILD_MODES]
    )

    daemon = build_daemon()
    populated = populate(daemon, per_key)
    daemon.http.start()
    url = f"http://127.0.0.1:{daemon.http.port}/metrics"
    try:
        for _ in range(WARMUP_SCRAPES):  # first-call imports and allocations
            scrape(url)
        idle_s, body = scrapes(url, n_idle, math.inf)
        shape = series_count(body)
        gz_s, gz_body = scrapes(url, n_other, budget_s, GZIP)
        if gzip.decompress(gz_body).count(b"\n") != body.count(b"\n"):
            raise RuntimeError("the gzip scrape does not hold the same exposition as the plain one")
        changed_s = scrapes_all_keys_changed(daemon, url, n_idle)
        no_http = render_no_http(daemon.exposition.render, url, reps=3 if args.quick else 20)
        under_ingest = scrapes_under_ingest(
            daemon, url, n_other, budget_s, per_key, rounds=1 if args.quick else 3, stretch_s=2.0 if args.quick else 5.0
        )
    finally:
        daemon.http.stop()

    idle = latency_stats(idle_s)
    changed = latency_stats(changed_s)
    gz = latency_stats(gz_s)
    # Issue 13's verdict: scrapes while another thread ingests flat out (GIL sharing), and what a
    # scrape a second costs that ingestion; the quiet cases are reported beside it.
    p99_ok = under_ingest["p99_ms"] < TARGET_P99_MS
    ingest_ok = under_ingest["ingest_ratio_scraped_over_not"] >= TARGET_INGEST_RATIO
    # The profile costs a few seconds (cProfile slows the render ~3x): full runs only, unless asked.
    want_profile = args.profile or (not p99_ok and not args.quick)
    profile = profile_render(daemon.exposition.render) if want_profile else None

    rss_ok = rss_pop["peak_rss_mb"] <= TARGET_RSS_MB
    ok = p99_ok and ingest_ok and rss_ok

    summary = (
        f"{NAME}: /metrics with {KEYS:,} keys ({shape['samples']:,} samples, {shape['bytes'] / 1e6:.1f} MB) "
        f"p99 {under_ingest['p99_ms']:.1f} ms under full ingest vs < {TARGET_P99_MS:.0f} ms: {verdict(p99_ok)} "
        f"(every key changed {changed['p99_ms']:.1f}, idle {idle['p99_ms']:.1f}); ingest with a scrape a second "
        f"{under_ingest['ingest_ratio_scraped_over_not']:.2f}x of without vs >= {TARGET_INGEST_RATIO}: "
        f"{verdict(ingest_ok)}; peak RSS {rss_pop['peak_rss_mb']:.0f} MB (bare import {rss_bare['peak_rss_mb']:.0f} "
        f"MB) vs <= {TARGET_RSS_MB:.0f} MB: {verdict(rss_ok)}" + (" [quick]" if args.quick else "")
    )
    write_result(
        NAME,
        args.quick,
        {
            "target": {
                "p99_ms_below_under_full_ingest": TARGET_P99_MS,
                "ingest_ratio_with_a_scrape_a_second_at_least": TARGET_INGEST_RATIO,
                "peak_rss_mb_at_most": TARGET_RSS_MB,
                "keys": KEYS,
            },
            "pass": ok,
            "pass_p99": p99_ok,
            "pass_ingest_ratio": ingest_ok,
            "all_keys_changed_text_0_0_4": changed,
            "pass_rss": rss_ok,
            "setup": {
                "keys": KEYS,
                "events_per_key": per_key,
                "populate": populated,
                "http": "daemon.runtime.http (ThreadingHTTPServer) on 127.0.0.1, urllib client, one request at a time",
                "warmup_scrapes": WARMUP_SCRAPES,
            },
            "exposition": shape,
            "gzip_bytes": len(gz_body),
            "idle_text_0_0_4": idle,
            "idle_gzip": gz,
            "under_ingest_text_0_0_4": under_ingest,
            "render_no_http": no_http,
            "peak_rss_mb": {
                "populate_only": rss_pop["peak_rss_mb"],
                "populate_and_one_scrape": rss_pop_scrape["peak_rss_mb"],
                "bare_import_daemon_app": rss_bare["peak_rss_mb"],
                "keys_cost": round(rss_pop["peak_rss_mb"] - rss_bare["peak_rss_mb"], 1),
                "how": "resource.getrusage(RUSAGE_SELF).ru_maxrss in a fresh interpreter per figure",
            },
            "profile_one_render_top_by_own_time": profile,
        },
        summary,
    )


if __name__ == "__main__":
    main()
