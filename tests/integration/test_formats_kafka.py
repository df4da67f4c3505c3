"""Log formats on the real broker, with both clients: the same requests logged natively, as OpenAI
chat completions (variant and version in Kafka headers), in a mapped JSON shape, as KServe's
logger CloudEvents and as Seldon Core 2's protobuf messages on a model's two topics (subscribed
by pattern), give the same metrics; each format's bad records are counted by reason."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from daemon.dev import formats as fixtures
from daemon.dev.broker import TansuBroker
from tests.integration.support import Samples, consume, produce, running_daemon, total, wait_for
from tests.unit.test_formats import classic_events

N = 600
BAD = {
    "openai": [b'{"id": "x", "model": "m", "usage": {"prompt_tokens": "many"}}', b"{not json"],
    "mapped": [b'{"meta": {"model": {"name": "m"}}}', b"[]"],
    "kserve": [b'{"specversion": "1.0", "id": "x", "type": "org.kubeflow.serving.inference.request"}', b"\x08garbage"],
    "seldon": [b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x04iris"],  # garbage; a request without inputs
}
CONVERT = {
    "openai": lambda e: [fixtures.openai(e)],
    "mapped": lambda e: [fixtures.mapped(e)],
    "kserve": fixtures.kserve,
}


def _per_model(s: Samples, model: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of `model`'s keys, with the model label taken out."""
    out = {}
    for (name, labels), v in s.items():
        d = dict(labels)
        if d.get("model") == model and name.startswith("inferwatch_") and "partition" not in d:
            out[(name, tuple(sorted((k, x) for k, x in d.items() if k != "model")))] = v
    return out


def test_each_format_gives_the_native_metrics(
    broker: TansuBroker, tmp_path: Path, unique: str, kafka_client: str
) -> None:
    # Each format beside the native events it stands for (an OpenAI record tells less).
    names = ("native-openai", "openai", "native-mapped", "mapped", "native-kserve", "kserve", "native-seldon")
    topics = {name: f"{name}-{unique}" for name in names}
    seldon = {kind: f"seldon.ns-{unique}.model.m-seldon.{kind}" for kind in ("inputs", "outputs")}
    dead_letter = f"dlq-{unique}"
    broker.create_topics([*topics.values(), *seldon.values(), dead_letter], partitions=1)
    llm, classic = fixtures.llm_events(N), classic_events(N)
    for name, topic in topics.items():
        model = f"m-{name}"
        mine = [{**e, "model": model} for e in (classic if name.endswith(("kserve", "seldon")) else llm)]
        if name.startswith("native"):
            views = {"native-openai": fixtures.openai_view, "native-kserve": fixtures.kserve_view}
            view = views.get(name, fixtures.seldon_view if name == "native-seldon" else dict)
            # A KServe event's model is namespace/name: the view's, here under the native topic's name.
            logged = [view(e) | {"model": model} for e in mine]
            produce(broker.bootstrap, topic, [(model.encode(), msgspec.json.encode(e)) for e in logged])
            continue
        records = [r for e in mine for r in CONVERT[name](e)]
        produce(broker.bootstrap, topic, [(model.encode(), v) for v, _ in records], [h for _, h in records])
        produce(broker.bootstrap, topic, [(model.encode(), v) for v in BAD[name]], [[("x-trace", b"t")]] * 2)
    halves = [r for e in classic for r in fixtures.seldon({**e, "model": "m-seldon"}, namespace=f"ns-{unique}")]
    for topic in seldon.values():
        mine = [r for r in halves if r.topic == topic]
        produce(broker.bootstrap, topic, [(r.key, r.value) for r in mine], timestamps_ms=[r.timestamp_ms for r in mine])
    produce(broker.bootstrap, seldon["inputs"], [(b"bad", v) for v in BAD["seldon"]], [[("x-trace", b"t")]] * 2)
    pattern = rf"^seldon\.ns-{unique}\.model\..+\.(inputs|outputs)$"
    config = {
        "source": {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": [*topics.values(), pattern],
                "group_id": f"g-{unique}",
                "client": kafka_client,
            },
            "formats": {
                topics["openai"]: fixtures.OPENAI,
                topics["mapped"]: fixtures.MAPPED,
                topics["kserve"]: fixtures.CLOUDEVENTS,
                pattern: fixtures.SELDON,
            },
        },
        "drift": {"enabled": False},
        "dead_letter": {"topic": dead_letter},
    }
    with running_daemon(tmp_path, config) as d:
        want = 4 * N + 4 * len(classic)
        wait_for(lambda: total(d.scrape(), "inferwatch_events_total") >= want, 60, "every event")
        wait_for(lambda: total(d.scrape(), "inferwatch_events_invalid_total") >= 8, 30, "the bad records")
        s = d.scrape()
    others = {"kserve": "default/m-kserve", "seldon": f"ns-{unique}/m-seldon"}
    for name in ("openai", "mapped", "kserve", "seldon"):
        native = _per_model(s, f"m-native-{name}")
        other = _per_model(s, others.get(name, f"m-{name}"))
        assert len(native) > 50 and any(n.startswith("inferwatch_llm") for n, _ in native) == (name not in others)
        assert other.keys() == native.keys(), name
        differ = {k: (v, native[k]) for k, v in other.items() if abs(v - native[k]) > 1e-6 * max(1.0, abs(v))}
        assert differ == {}, name
    invalid = {labels: v for (n, labels), v in s.items() if n == "inferwatch_events_invalid_total" and v}  # by reason
    reasons = sorted(dict(labels)["reason"] for labels in invalid)
    assert reasons == ["malformed_json", "malformed_protobuf", "missing_field", "not_an_object", "wrong_type"]
    # Dead-letter copies keep the record's own headers, then Kafka Connect's.
    copies = consume(broker.bootstrap, dead_letter, 8)
    assert len(copies) == 8
    assert all([k for k, _ in r.headers][:2] == ["x-trace", "__connect.errors.topic"] for r in copies)
    logs = d.logs()
    assert re.search(r"request_id: path meta\.trace\.id not in the record", logs), logs[-2000:]
