"""Decode rate of each log format against the native format's, same events, same run (issue 17).

N LLM requests (control and canary, 5% errors, features on the mapped shape) are written natively
and in each format (`daemon/dev/formats.py`: OpenAI chat completions with vLLM's metrics and
headers; a nested JSON shape read by a mapping with units, list indices, a header and an RFC 3339
time). Each goes through `ChunkDecoder.decode` in polls of 2,000 records, from bytes to the
columnar batch the pipeline takes: the unit a poll costs. Native and format passes alternate.
Target: each format >= 0.5x the native events/s.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
from _common import parse_args, pin_to_one_core, rate_stats, timed, verdict, write_result

from daemon.config import from_mapping
from daemon.dev import formats as fixtures
from daemon.ingest.decode import ChunkDecoder
from daemon.ingest.sources import Chunk
from daemon.runtime.lifecycle import tune_gc

NAME = "formats"
TARGET = 0.5
POLL = 2_000


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="events per format (default 500,000; 50,000 with --quick)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each (default 3)")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")


def _polls(values: list[bytes], headers: list[Any] | None) -> list[Chunk]:
    return [
        Chunk("t", 0, range(i, min(i + POLL, len(values))), None, None, values[i : i + POLL],
              headers=None if headers is None else headers[i : i + POLL])
        for i in range(0, len(values), POLL)
    ]  # fmt: skip


def _decoder(fmt: dict[str, Any] | None) -> ChunkDecoder:
    config = from_mapping({} if fmt is None else {"source": {"format": fmt}})
    return ChunkDecoder(config.limits.max_event_bytes, None, config.plausibility, config.source)


def _pass(decoder: ChunkDecoder, polls: list[Chunk]) -> int:
    n = 0
    for chunk in polls:
        out = decoder.decode([chunk])
        assert not out.failures and out.batch is not None
        n += len(out.batch.events)
    return n


def main() -> None:
    args = parse_args(__doc__, _add_args)
    n = args.events or (50_000 if args.quick else 500_000)
    repeats = 1 if args.quick else args.repeats
    cpu = pin_to_one_core(args.cpu)
    tune_gc()
    evs = fixtures.llm_events(n, seed=17, rate=1000.0)
    results: dict[str, Any] = {}
    lines = []
    ok_all = True
    for name, convert, view, fmt in (
        ("openai", fixtures.openai, fixtures.openai_view, fixtures.OPENAI),
        ("mapped", fixtures.mapped, lambda e: e, fixtures.MAPPED),
    ):
        native = _polls([msgspec.json.encode(view(e)) for e in evs], None)
        records = [convert(e) for e in evs]
        other = _polls([v for v, _ in records], [h for _, h in records])
        decoders = {"native": _decoder(None), name: _decoder(fmt)}
        rates: dict[str, list[float]] = {"native": [], name: []}
        for _ in range(repeats):
            for which, polls in (("native", native), (name, other)):
                counted: list[int] = []
                rates[which].append(n / timed(lambda d=decoders[which], p=polls, c=counted: c.append(_pass(d, p))))
                if counted != [n]:
                    raise SystemExit(f"{which}: decoded {counted} of {n} events")
        stats = {k: rate_stats(v) for k, v in rates.items()}
        ratio = stats[name]["median"] / stats["native"]["median"]
        ok = ratio >= TARGET
        ok_all &= ok
        results[name] = {**stats, "ratio_of_medians": ratio, "target": TARGET, "pass": ok}
        lines.append(
            f"{name} {ratio:.2f}x native ({stats[name]['median']:,.0f} vs {stats['native']['median']:,.0f} "
            f"events/s) vs >= {TARGET}x {verdict(ok)}"
        )
    summary = f"{NAME}: " + " | ".join(lines) + (" [quick]" if args.quick else "")
    write_result(
        NAME,
        args.quick,
        {
            "unit": "events/s",
            "pass": ok_all,
            "setup": {
                "events": n,
                "repeats": repeats,
                "poll": POLL,
                "pinned_cpu": cpu,
                "measured": "ChunkDecoder.decode: record bytes to the columnar batch",
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            **results,
        },
        summary,
    )


if __name__ == "__main__":
    main()
