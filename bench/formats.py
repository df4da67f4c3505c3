"""Decode rate of each log format against the native format's, same events, same run (issue 17).

N LLM requests (control and canary, 5% errors, features on the mapped shape) are written natively
and in each format (`daemon/dev/formats.py`: OpenAI chat completions with vLLM's metrics and
headers; a nested JSON shape read by a mapping with units, list indices, a header and an RFC 3339
time); N classic requests (8 features) as KServe's logger CloudEvents (binary mode, V1: two
records an event, ten headers each) and as Seldon's protobuf messages (two records an event, a
tensor per feature as MLServer's pandas codec writes them; and, for the events whose six float
features are all there, one [1, 6] FP64 tensor as a scikit-learn model takes them). Each goes
through `ChunkDecoder.decode` in polls of 2,000 records, from bytes to the columnar batch the
pipeline takes: the unit a poll costs. Native and format passes
alternate. Target: each format >= 0.5x the native events/s (an event of a paired format is two
records: its records/s are twice its events/s). And 1M request halves whose responses never
come leave the memory flat: RSS after them within 20 MB of the RSS after the first tenth.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import msgspec
from _common import parse_args, pin_to_one_core, rate_stats, timed, verdict, write_result

from daemon.config import from_mapping
from daemon.dev import formats as fixtures
from daemon.dev.generator import TrafficGenerator, TrafficSpec
from daemon.ingest.decode import ChunkDecoder
from daemon.ingest.formats.cloudevents import CloudEventsFormat
from daemon.ingest.sources import Chunk
from daemon.runtime.lifecycle import tune_gc

NAME = "formats"
TARGET = 0.5
POLL = 2_000


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, help="events per format (default 500,000; 50,000 with --quick)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each (default 3)")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")


def _polls(values: list[bytes], headers: list[Any] | None) -> list[list[Chunk]]:
    return [
        [Chunk("t", 0, range(i, min(i + POLL, len(values))), None, None, values[i : i + POLL],
               headers=None if headers is None else headers[i : i + POLL])]
        for i in range(0, len(values), POLL)
    ]  # fmt: skip


def _seldon_polls(records: list[fixtures.SeldonRecord]) -> list[list[Chunk]]:
    """Seldon's records in polls of POLL records: a chunk of the inputs topic, one of the outputs
    topic (keys and Kafka record times included)."""
    out = []
    for i in range(0, len(records), POLL):
        poll = []
        for topic in dict.fromkeys(r.topic for r in records[i : i + POLL]):
            mine = [(k, r) for k, r in enumerate(records[i : i + POLL], i) if r.topic == topic]
            poll.append(
                Chunk(topic, 0, [k for k, _ in mine], [r.timestamp_ms / 1000 for _, r in mine],
                      [r.key for _, r in mine], [r.value for _, r in mine])
            )  # fmt: skip
        out.append(poll)
    return out


def _numeric(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with their float features only, those that have all six (a dense tensor)."""
    out = [e | {"features": {k: v for k, v in e["features"].items() if type(v) is float}} for e in events]
    return [e for e in out if len(e["features"]) == 6]


def _one_tensor(ev: dict[str, Any]) -> list[fixtures.SeldonRecord]:
    """Seldon with the features as one FP64 tensor [1, 6] named predict (a scikit-learn model's
    input as MLServer takes it), the response as fixtures.seldon writes it."""
    from daemon.ingest.formats import oip_pb2

    request, response = fixtures.seldon(ev)
    message = oip_pb2.ModelInferRequest(model_name=ev["model"], id=ev["request_id"])
    t = message.inputs.add(name="predict", datatype="FP64", shape=[1, 6])
    t.contents.fp64_contents.extend(ev["features"].values())
    return [request._replace(value=message.SerializeToString()), response]


def _one_tensor_view(ev: dict[str, Any]) -> dict[str, Any]:
    view = fixtures.seldon_view(ev)
    return view | {"features": {f"predict_{j}": v for j, v in enumerate(ev["features"].values())}}


def _decoder(fmt: dict[str, Any] | None) -> ChunkDecoder:
    config = from_mapping({} if fmt is None else {"source": {"format": fmt}})
    return ChunkDecoder(config.limits.max_event_bytes, None, config.plausibility, config.source)


def _pass(decoder: ChunkDecoder, polls: list[list[Chunk]]) -> int:
    n = 0
    for poll in polls:
        out = decoder.decode(poll)
        assert not out.failures and out.batch is not None
        n += len(out.batch.events)
    return n


def _rss_mb() -> float:
    """Resident memory now (not the peak: the decode-rate runs hold their records)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _unmatched(halves: int) -> dict[str, Any]:
    """`halves` requests whose responses never come, through one cloudevents decoder in polls: the
    memory they leave must not grow with them (the join holds join_max_pending per partition)."""
    decoder = _decoder(fixtures.CLOUDEVENTS)
    template = fixtures.kserve(fixtures.llm_events(1)[0] | {"prediction": 1}, "structured")[0][0]
    head, tail = template.split(b'"id": "', 1)
    tail = tail.split(b'"', 1)[1]
    rss, unmatched = [], 0
    for start in range(0, halves, POLL):
        values = [head + b'"id": "u' + str(i).encode() + b'"' + tail for i in range(start, min(start + POLL, halves))]
        out = decoder.decode([Chunk("t", 0, range(start, start + len(values)), None, None, values)])
        unmatched += sum(f.reason == "unmatched" for _, f in out.failures)
        if start // POLL in (halves // POLL // 10, halves // POLL - 1):
            rss.append(_rss_mb())
    fmt = decoder.default_format
    assert isinstance(fmt, CloudEventsFormat)
    return {"halves": halves, "unmatched": unmatched, "pending": fmt.pending(), "rss_mb": rss}


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
    classic = [e for e in TrafficGenerator(TrafficSpec(rate=1000, duration_s=n / 1000, seed=17)).events()]
    classic = [e for e in classic if e["status"] == "ok"][:n]
    for name, events, convert, view, fmt in (
        ("openai", evs, lambda e: [fixtures.openai(e)], fixtures.openai_view, fixtures.OPENAI),
        ("mapped", evs, lambda e: [fixtures.mapped(e)], lambda e: e, fixtures.MAPPED),
        ("cloudevents-inference", classic, fixtures.kserve, fixtures.kserve_view, fixtures.CLOUDEVENTS),
        ("seldon", classic, fixtures.seldon, fixtures.seldon_view, fixtures.SELDON),
        ("seldon, one tensor", _numeric(classic), _one_tensor, _one_tensor_view, fixtures.SELDON),
    ):
        n = len(events)
        native = _polls([msgspec.json.encode(view(e)) for e in events], None)
        records = [r for e in events for r in convert(e)]
        if isinstance(records[0], fixtures.SeldonRecord):
            other = _seldon_polls(records)
        else:
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
    memory = _unmatched(100_000 if args.quick else 1_000_000)
    grew = memory["rss_mb"][-1] - memory["rss_mb"][0]
    flat = grew < 20.0 and memory["pending"] <= 10_000
    ok_all &= flat
    lines.append(
        f"{memory['halves']:,} unmatched halves: {memory['pending']:,} held, RSS +{grew:.1f} MB after the "
        f"first tenth vs < 20 MB {verdict(flat)}"
    )
    results["unmatched_halves"] = {**memory, "grew_mb": grew, "pass": flat}
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
