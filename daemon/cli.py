"""The `inferwatch` command: run, demo, replay, shadow, check-config, generate, schema."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from daemon import __version__
from daemon.config import Config, ConfigError, load
from daemon.ingest.formats import FORMATS
from daemon.runtime.lifecycle import tune_gc
from daemon.runtime.logs import configure


def _load(path: str | None, fmt: str | None = None) -> Config:
    """The config, with `--format` (the input's log format, its mapping from the config)."""
    try:
        return load(path, overrides=None if fmt is None else {"source": {"format": {"type": fmt}}})
    except ConfigError as exc:
        print(f"inferwatch: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.runtime.app import Daemon

    config = _load(args.config)
    configure(config.logging.level, config.logging.format)
    daemon = Daemon(config)
    tune_gc()
    return daemon.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.runtime.app import load_references

    config = _load(args.file)
    load_references(config)
    if config.shadow.models:
        from daemon.shadow.service import RunnerProcess

        errors = RunnerProcess(config.shadow, "error").call("validate")["errors"]
        if errors:
            print(f"inferwatch: {args.file}: shadow models do not fit their config:", file=sys.stderr)
            print("  " + "\n  ".join(errors), file=sys.stderr)
            return 2
    print(f"{args.file}: ok (topics {', '.join(config.source.kafka.topics)}, http port {config.http.port})")
    return 0


def _writable(path: str, flag: str, command: str) -> bool:
    """Whether `path` can be written (its folder exists and takes files); else say why, on stderr:
    checked before the work, so that a long run does not end in a traceback."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        print(f"inferwatch {command}: {flag} {path}: folder {folder} does not exist", file=sys.stderr)
        return False
    if Path(path).is_dir() or not os.access(folder, os.W_OK):
        print(f"inferwatch {command}: {flag} {path}: cannot write a file there", file=sys.stderr)
        return False
    return True


def cmd_replay(args: argparse.Namespace) -> int:
    from daemon.runtime.replay import replay

    config = _load(args.config, args.format)
    configure("warning", config.logging.format)
    if not Path(args.file).is_file():
        print(f"inferwatch: replay input {args.file} is not a file", file=sys.stderr)
        return 2
    if args.labels is not None and not Path(args.labels).is_file():
        print(f"inferwatch: --labels {args.labels} is not a file", file=sys.stderr)
        return 2
    if not _writable(args.report, "--report", "replay"):
        return 2
    if args.html is not None:
        if not _writable(args.html, "--html", "replay"):
            return 2
        if importlib.util.find_spec("matplotlib") is None:
            print("inferwatch replay: --html needs matplotlib: pip install 'inferwatch[report]'", file=sys.stderr)
            return 2
    if config.source.format.type == "seldon" and not args.records:
        print(
            "inferwatch: seldon records say what they are in their topic and key: replay a records file, "
            "with --records (docs/formats.md)",
            file=sys.stderr,
        )
        return 2
    tune_gc()
    report = replay(args.file, config, labels=args.labels, records=args.records)
    Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    print(f"replayed {report['events']} events ({report['invalid']} invalid) → {args.report}")
    if args.html is not None:
        from daemon.report.html import render

        # What the replay left (its pipeline, by now garbage or the report) leaves the collector's
        # walks: matplotlib allocates much, and each full collection would walk all of it.
        gc.freeze()
        Path(args.html).write_text(render(report))
        print(f"report page → {args.html}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change, parse_model

    try:
        spec = TrafficSpec(
            models=tuple(parse_model(m) for m in args.model) if args.model else TrafficSpec.models,
            rate=args.rate,
            duration_s=args.duration,
            seed=args.seed,
            changes=tuple(parse_change(c) for c in args.change),
            start_time=args.start_time,
        )
    except ValueError as exc:
        print(f"inferwatch generate: {exc}", file=sys.stderr)
        return 2
    gen = TrafficGenerator(spec)
    if args.output:
        with ExitStack() as files:
            out = files.enter_context(open(args.output, "wb"))
            labels = files.enter_context(open(args.labels_output, "wb")) if args.labels_output else None
            for ev in gen.events():
                out.write(encode(ev)[1] + b"\n")
                if labels is not None:  # a constant delay keeps the labels in time order
                    labels.write(encode(gen.label(ev))[1] + b"\n")
        also = f" and their labels to {args.labels_output}" if args.labels_output else ""
        print(f"wrote {spec.n_events} events to {args.output}{also}")
        return 0
    if args.labels_output:
        print("inferwatch generate: --labels-output needs --output", file=sys.stderr)
        return 2
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=args.bootstrap_servers.split(","), linger_ms=20)
    n = 0
    try:
        for key, value in gen.paced() if not args.fast else gen.encoded():
            producer.send(args.topic, key=key, value=value)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush()
        producer.close()
    print(f"produced {n} events to {args.topic}")
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    from kafka.errors import NoBrokersAvailable

    from daemon.shadow import oneshot
    from daemon.shadow.service import RunnerProcess, ShadowError

    config = _load(args.config, args.format)
    configure("warning", config.logging.format)
    # kafka-python logs every failed connect; a one-shot command says what failed in one line.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    if not args.once:
        print("inferwatch shadow: pass --once (the daemon schedules runs itself when shadow.enabled)", file=sys.stderr)
        return 2
    if not config.shadow.models:
        print(f"inferwatch shadow: {args.config} lists no shadow.models", file=sys.stderr)
        return 2
    if args.input is not None and not Path(args.input).is_file():
        print(f"inferwatch shadow: --input {args.input} is not a file", file=sys.stderr)
        return 2
    if args.json is not None and not _writable(args.json, "--json", "shadow"):
        return 2
    runner = RunnerProcess(config.shadow, "warning", config.logging.format)
    try:
        errors = runner.call("validate")["errors"]
        if errors:
            print("inferwatch shadow: models do not fit their config:\n  " + "\n  ".join(errors), file=sys.stderr)
            return 2
        if args.input is not None:
            samples = oneshot.from_file(config, args.input)
        else:
            samples = oneshot.from_kafka(config, args.max_events)
        unseen = oneshot.unseen(config, samples)
        if unseen:
            lines = ["mappings name features the logs lack:", *unseen]
            print("inferwatch shadow: " + "\n  ".join(lines), file=sys.stderr)
            return 2
        report = runner.call("run", samples)
    except NoBrokersAvailable:
        servers = ", ".join(config.source.kafka.bootstrap_servers)
        what = f"no Kafka broker answers at {servers} (source.kafka.bootstrap_servers)"
        print(f"inferwatch shadow: {what}", file=sys.stderr)
        return 2
    except ShadowError as exc:
        print(f"inferwatch shadow: {exc}", file=sys.stderr)
        return 1
    print(oneshot.table(report))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(m["status"] == "failed" for m in report["models"]) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.dev.demo import DemoOptions, run_demo

    # The terminal view tells the story; the daemon's own lines would drown it.
    configure("error", "auto")
    tune_gc()
    options = DemoOptions(
        duration_s=args.duration,
        http_port=args.http_port,
        rate=args.rate,
        every_s=args.summary_every,
        seed=args.seed,
        drift_after_s=args.drift_after,
        shadow_every_s=args.shadow_every,
        prometheus=not args.no_prometheus,
        scrape_every_s=args.scrape_every,
        alert_for_s=args.alert_for,
    )
    try:
        return run_demo(options)
    except RuntimeError as exc:  # the embedded broker, a model or Prometheus is missing or would not start
        print(f"inferwatch demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting up: everything started has been stopped
        return 130


def cmd_schema(args: argparse.Namespace) -> int:
    from daemon.ingest.events import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="inferwatch", description=__doc__)
    ap.add_argument("--version", action="version", version=f"inferwatch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the daemon")
    p.add_argument("--config", help="YAML config (default: built-in defaults + INFERWATCH__* env)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file; exit 0 or print what is wrong")
    p.add_argument("file")
    p.set_defaults(fn=cmd_check_config)

    p = sub.add_parser("replay", help="run the pipeline over a JSONL file and write a JSON report")
    p.add_argument("file")
    p.add_argument("--report", required=True, help="where to write the JSON report")
    p.add_argument("--html", help="also write the report as one self-contained HTML page (the report extra)")
    p.add_argument("--labels", help="JSONL file of label events (request_id, model, label, timestamp)")
    p.add_argument("--config")
    p.add_argument("--format", choices=FORMATS, help="the file's log format (default: source.format; docs/formats.md)")
    p.add_argument(
        "--records",
        action="store_true",
        help="the file holds whole Kafka records (topic, key, headers, time, value in base64), not values",
    )
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("generate", help="seeded synthetic traffic, to Kafka or to a JSONL file")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--model", action="append", help="name or name:variant,variant (repeatable)")
    p.add_argument("--change", action="append", default=[], help="e.g. 'after=3m model=m feature=f0 shift=1'")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start-time", type=float, help="unix time of the first event (default: now)")
    p.add_argument("--output", help="write JSONL here instead of producing to Kafka")
    p.add_argument("--labels-output", help="with --output: also write each event's label (5 s later) here")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    p.add_argument("--topic", default="inference-logs")
    p.add_argument("--fast", action="store_true", help="produce as fast as possible, ignoring --rate pacing")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("shadow", help="benchmark the configured models on recent real inputs, once")
    p.add_argument("--config", required=True, help="the daemon's config (shadow.models, source.kafka)")
    p.add_argument("--once", action="store_true", help="run once now and print a table")
    p.add_argument("--input", help="take the inputs from this JSONL file instead of the broker")
    p.add_argument("--max-events", type=int, default=100_000, help="newest records read from the broker")
    p.add_argument("--format", choices=FORMATS, help="the records' log format (default: source.format)")
    p.add_argument("--json", help="also write the full report here")
    p.set_defaults(fn=cmd_shadow)

    p = sub.add_parser(
        "demo", help="embedded broker + synthetic traffic + the daemon + shadow runs + Prometheus and Alertmanager"
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--http-port", type=int, help="port for /metrics (default: a free one)")
    p.add_argument("--rate", type=float, default=300.0, help="events per second, over 3 models (default 300)")
    p.add_argument("--summary-every", type=float, default=5.0, help="seconds between refreshes of the view")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drift-after", type=float, default=180.0, help="seconds until fraud-detector's f0 drifts")
    p.add_argument("--shadow-every", type=float, default=60.0, help="seconds between shadow runs (default 60)")
    p.add_argument("--no-prometheus", action="store_true", help="start no Prometheus and Alertmanager")
    p.add_argument(
        "--scrape-every", type=float, default=5.0, help="Prometheus scrape and rule interval, Alertmanager group_wait"
    )
    p.add_argument("--alert-for", type=float, default=30.0, help="every alert rule's for:, in seconds (default 30)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("schema", help="print the event JSON Schema")
    p.set_defaults(fn=cmd_schema)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.fn(args)
    except ConfigError as exc:  # found after loading, e.g. an unreadable drift.reference_file
        print(f"inferwatch: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
