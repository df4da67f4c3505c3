"""The demo's terminal view: a table that refreshes in place (rich) on a terminal, plain text blocks
otherwise (a pipe, a test, CI), both from the same rows."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.shadow.oneshot import align
from daemon.shadow.oneshot import table as shadow_table

KEY_COLUMNS = (
    "model", "ver", "variant", "events", "errors", "p50 ms", "p95 ms", "p99 ms",
    "mean TTFT ms", "accuracy (est.)", "drift", "canary",
)  # fmt: skip
ALERT_COLUMNS = ("alert", "model", "variant", "detail", "Prometheus", "Alertmanager")


@dataclass
class Snapshot:
    """What the view shows at one moment; `alerts` is None when Prometheus is off."""

    elapsed_s: float
    status: Mapping[str, Any]
    canaries: Mapping[str, Any]
    shadow: Mapping[str, Any]
    ttft_ms: Mapping[tuple[str, str], float]
    alerts: list[tuple[str, ...]] | None


def key_rows(s: Snapshot) -> list[tuple[str, ...]]:
    """One row per key, in KEY_COLUMNS' order; the canary column says fail, pass, inconclusive or baseline."""
    verdicts = {
        (model, variant): c["verdict"]
        for model, m in s.canaries.get("models", {}).items()
        for variant, c in m["variants"].items()
    }
    baselines = {(model, m["baseline"]) for model, m in s.canaries.get("models", {}).items()}
    rows: list[tuple[str, ...]] = []
    for k in sorted(s.status["keys"], key=lambda k: (k["model"], k["variant"])):
        key = (k["model"], k["variant"])
        ms = {q: "-" if v is None else f"{v * 1000:.1f}" for q, v in k["latency_seconds"].items()}
        quality = k["quality"]
        ttft = s.ttft_ms.get(key)
        detections = sum(k.get("drift", {}).get("detections", {}).values())
        rows.append(
            (
                k["model"],
                k["version"],
                k["variant"],
                f"{k['events']:,}",
                f"{k['error_rate']:.2%}",
                ms["p50"],
                ms["p95"],
                ms["p99"],
                "-" if ttft is None else f"{ttft:.0f}",
                f"{_pct(quality['metrics'].get('accuracy'))} ({_pct(quality['accuracy_estimated'])})",
                f"{detections} detection(s)" if detections else "-",
                verdicts.get(key, "baseline" if key in baselines else "-"),
            )
        )
    return rows


def canary_lines(s: Snapshot) -> list[str]:
    out = []
    for model, m in s.canaries.get("models", {}).items():
        for variant, c in m["variants"].items():
            why = f"  ({'; '.join(c['reasons'])})" if c["reasons"] else ""
            out.append(f"canary {model}/{variant} vs {m['baseline']}: {c['verdict']} (score {c['score']:.0f}){why}")
    return out


def headline(s: Snapshot) -> str:
    lag = sum(s.status["lag"].values())
    invalid = sum(s.status["invalid"].values())
    return f"[{s.elapsed_s:5.0f}s] events={s.status['events']:,} invalid={invalid:,} lag={lag:,}"


def shadow_text(s: Snapshot) -> str:
    runs, last, error = s.shadow.get("runs", {}), s.shadow.get("last_run"), s.shadow.get("last_error")
    failed = f"the last round failed: {error}\n" if error else ""
    if last is None:
        return f"{failed}no round finished yet (rounds failed: {runs.get('failed', 0)})"
    return failed + shadow_table(last)


def plain(s: Snapshot, with_shadow: bool) -> str:
    """A text block: the headline, the key table, the canary verdicts, the alerts and (when asked) the
    latest shadow run's table."""
    lines = [headline(s), *("  " + r for r in align([KEY_COLUMNS, *key_rows(s)]))]
    lines += ["  " + line for line in canary_lines(s)]
    if s.alerts is not None:
        rows = align([ALERT_COLUMNS, *s.alerts]) if s.alerts else ["alerts: none pending or firing"]
        lines += ["  " + r for r in rows]
    if with_shadow:
        lines += ["  shadow run:", *("    " + line for line in shadow_text(s).splitlines())]
    return "\n".join(lines)


class View(Protocol):
    def update(self, s: Snapshot) -> None: ...

    def note(self, line: str) -> None: ...


class PlainView:
    """Prints a block every update, with the shadow section when a round has finished (or failed)."""

    def __init__(self) -> None:
        self._runs: Mapping[str, int] = {}

    def update(self, s: Snapshot) -> None:
        runs = s.shadow.get("runs", {})
        print("\n" + plain(s, with_shadow=runs != self._runs and any(runs.values())), flush=True)
        self._runs = runs

    def note(self, line: str) -> None:
        print(line, flush=True)


class LiveView:
    """A rich Live display, redrawn in place at each update; notes scroll above it."""

    def __init__(self, live: Any) -> None:
        self._live = live

    def update(self, s: Snapshot) -> None:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        keys = Table(title=headline(s), title_justify="left", expand=False)
        for c in KEY_COLUMNS:
            keys.add_column(c, justify="left" if c in ("model", "ver", "variant", "canary") else "right")
        for row in key_rows(s):
            style = {"fail": "bold red", "pass": "green"}.get(row[-1])
            keys.add_row(*row[:-1], Text(row[-1], style=style or ""))
        parts: list[Any] = [keys, Text("\n".join(canary_lines(s)))]
        if s.alerts is not None:
            alerts = Table(title="alerts (Prometheus rules → Alertmanager)", title_justify="left")
            for c in ALERT_COLUMNS:
                alerts.add_column(c)
            for row in s.alerts:
                alerts.add_row(*row)
            parts.append(alerts if s.alerts else Text("alerts: none pending or firing"))
        parts.append(Panel(Text(shadow_text(s)), title="shadow benchmark (latest run)", expand=False))
        self._live.update(Group(*parts), refresh=True)

    def note(self, line: str) -> None:
        self._live.console.print(line, markup=False, highlight=False)


@contextmanager
def open_view() -> Iterator[View]:
    """A LiveView on a terminal (when rich is installed), else a PlainView."""
    if not sys.stdout.isatty():
        yield PlainView()
        return
    try:
        from rich.live import Live
    except ImportError:  # rich comes with the demo extra
        yield PlainView()
        return
    with Live(auto_refresh=False, redirect_stdout=True, redirect_stderr=True) as live:
        yield LiveView(live)


def alert_rows(
    prometheus: Sequence[Mapping[str, Any]], alertmanager: Sequence[Mapping[str, Any]]
) -> list[tuple[str, ...]]:
    """The alerts table's rows: one per pending or firing alert of Prometheus, with whether
    Alertmanager holds it (active, or suppressed by an inhibition)."""
    held = {_identity(a["labels"]): a["status"]["state"] for a in alertmanager}
    rows: list[tuple[str, ...]] = []
    for a in sorted(prometheus, key=lambda a: sorted(a["labels"].items())):
        labels = a["labels"]
        detail = labels.get("stream") or labels.get("slo") or labels.get("baseline", "")
        rows.append(
            (
                labels["alertname"],
                labels.get("model", ""),
                labels.get("variant", ""),
                detail if "baseline" not in labels else f"vs {detail}",
                a["state"],
                held.get(_identity(labels), "-"),
            )
        )
    return rows


def _identity(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"
