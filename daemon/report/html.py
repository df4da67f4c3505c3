"""`inferwatch replay --html`: the replay report (docs/replay-report.md) as one self-contained HTML
page: a summary in words, then per key its traffic, latency, drift and accuracy over time, and
the canary comparisons. Plots are matplotlib SVG inline: no script, no network.

It reads only the report (the JSON `replay` writes), so rendering costs what the plots cost, not
another pass over the events. At most MAX_KEYS keys get plots (those with alerts, then the
busiest); the others are listed in a table.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

MAX_KEYS = 20
FIELDS = ("effect", "lower", "upper")
MAX_DISTRIBUTIONS = 8  # before/after plots per key (its first alerts)
NEAR = 0.8  # a stream whose score came this close to its threshold gets a panel of its own
COLOURS = {"pass": "#2e7d32", "inconclusive": "#9e9e9e", "fail": "#c62828"}

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
.summary li { margin: 0.25em 0; } .muted { color: #777; } figure { margin: 0.5em 0; }
.fail { color: #c62828; font-weight: bold; } .pass { color: #2e7d32; } svg { max-width: 100%; height: auto; }
"""


def render(report: dict[str, Any]) -> str:
    """The page for a replay report (the dict `replay` returns, or its JSON loaded)."""
    with _matplotlib() as plt:
        page = _Page(report, plt)
        return page.html()


@contextmanager
def _matplotlib() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}):
        yield plt


class _Page:
    def __init__(self, report: dict[str, Any], plt: Any) -> None:
        self.r = report
        self.plt = plt
        self.series = report.get("series") or {"keys": [], "canary": [], "time": [], "points": 0}
        # The x axis: minutes or hours of event time since the first event (date tick locators and
        # tight layouts cost more than the rest of the drawing).
        span = (self.series["time"][-1] - self.series["start"]) if self.series["time"] else 0.0
        self.unit, self.scale = ("hours", 3600.0) if span > 3 * 3600 else ("minutes", 60.0)
        self.times = [self._x(t) for t in self.series["time"]]
        self.figures = 0

    def _x(self, t: float) -> float:
        return (t - float(self.series["start"])) / self.scale

    # -- the page -------------------------------------------------------------------------------

    def html(self) -> str:
        keys = self._drawn()
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>inferwatch replay report</title>",
            f"<style>{CSS}</style></head><body>",
            "<h1>inferwatch replay report</h1>",
            self._summary(),
        ]
        if keys:
            parts.append('<nav><p>Keys: ' + " · ".join(
                f'<a href="#{_anchor(k)}">{html.escape(_name(k))}</a>' for k in keys
            ) + "</p></nav>")  # fmt: skip
        parts += [self._key(k) for k in keys]
        rest = [k for k in self.series["keys"] if k not in keys]
        if rest:
            parts.append(self._rest(rest))
        if self.series["canary"]:
            parts.append('<section id="canary"><h2>Canary comparisons</h2>')
            parts += [self._comparison(c) for c in self.series["canary"]]
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def _drawn(self) -> list[dict[str, Any]]:
        alerted = {(a["model"], a["version"], a["variant"]) for a in self.r["alerts"]}
        keys = sorted(
            self.series["keys"],
            key=lambda k: (_ident(k) not in alerted, -sum(x or 0 for x in k["events"]), _name(k)),
        )
        return keys[:MAX_KEYS]

    def _summary(self) -> str:
        r = self.r
        lines = []
        summary = r["summary"]
        times = self.series["time"]
        when = ""
        if times:
            start, end = self.series["start"], times[-1]
            when = f" from {_stamp(start)} to {_stamp(end)} ({_duration(end - start)} of event time)"
        lines.append(
            f"{r['events']:,} events{when}, {len(summary)} key{'s' if len(summary) != 1 else ''}; "
            f"{r['invalid']:,} invalid records"
            + (f" ({', '.join(f'{k}: {v:,}' for k, v in r['invalid_by_reason'].items())})" if r["invalid"] else "")
            + "."
        )
        if not r["alerts"]:
            lines.append("No drift was detected.")
        for a in r["alerts"]:
            lines.append(
                f"<b>{html.escape(_name(a))}</b>: <b>{html.escape(a['stream'])}</b> drifted at "
                f"{_stamp(a['timestamp'])} (line {a['index']:,}){html.escape(_how(a))}."
            )
        final: dict[tuple[str, str], dict[str, Any]] = {}
        for e in r["canary"]:
            final[(e["model"], e["variant"])] = e
        for (model, variant), e in final.items():
            reasons = "; ".join(e["reasons"])
            lines.append(
                f"Canary <b>{html.escape(model)}/{html.escape(variant)}</b> vs {html.escape(e['baseline'])}: "
                f'<span class="{e["verdict"]}">{e["verdict"]}</span> (score {e["score"]:.0f}, from line '
                f"{e['index']:,})" + (f": {html.escape(reasons)}" if reasons else "") + "."
            )
        for row in summary:
            q = row.get("quality") or {}
            accuracy = (q.get("metrics") or {}).get("accuracy")
            if accuracy is None:
                continue
            estimate = q.get("accuracy_estimated")
            est = f", estimated without labels {100 * estimate:.1f}%" if estimate is not None else ""
            lines.append(
                f"{html.escape(_name(row))}: accuracy {100 * accuracy:.1f}% over its last {q['window']:,} "
                f"labelled predictions{est}."
            )
        if "labels" in r:
            lab = r["labels"]
            lines.append("Labels: " + ", ".join(f"{k} {v:,}" for k, v in lab.items() if isinstance(v, int)) + ".")
        items = "".join(f"<li>{line}</li>" for line in lines)
        return f'<section id="summary" class="summary"><h2>What happened</h2><ul>{items}</ul></section>'

    def _key(self, k: dict[str, Any]) -> str:
        ident = _ident(k)
        alerts = [a for a in self.r["alerts"] if (a["model"], a["version"], a["variant"]) == ident]
        out = [f'<section class="key" id="{_anchor(k)}"><h2>{html.escape(_name(k))}</h2>']
        out.append("<h3>Event rate</h3>" + self._rate(k))
        if any(v is not None for v in k["latency_seconds"]["p50"]):
            out.append("<h3>Latency quantiles</h3>" + self._latency(k))
        if k["drift"]:
            out.append("<h3>Drift: score against threshold</h3>" + self._drift(k, alerts))
        if alerts:
            out.append("<h3>Drift alerts</h3>" + _alert_table(alerts))
            drawn = [a for a in alerts if a.get("distribution")][:MAX_DISTRIBUTIONS]
            if drawn:
                out.append("<h3>Before and after</h3>" + "".join(self._distribution(a) for a in drawn))
        if any(v is not None for v in k["accuracy"] + k["accuracy_estimated"]):
            out.append("<h3>Accuracy</h3>" + self._accuracy(k))
        out.append("</section>")
        return "\n".join(out)

    def _rest(self, keys: list[dict[str, Any]]) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(_name(k))}</td><td>{sum(x or 0 for x in k['events']):,}</td>"
            f"<td>{sum(x or 0 for x in k['errors']):,}</td></tr>"
            for k in keys
        )
        return (
            f'<section id="other-keys"><h2>Other keys ({len(keys)})</h2><p class="muted">Plots are drawn for '
            f"{MAX_KEYS} keys; the report's JSON has every key's series.</p>"
            f"<table><tr><th>key</th><th>events</th><th>errors</th></tr>{rows}</table></section>"
        )

    # -- plots ----------------------------------------------------------------------------------

    def _svg(self, fig: Any, caption: str) -> str:
        self.figures += 1
        buf = io.StringIO()
        # Ids unique within the page: every figure's clip paths would otherwise share them.
        with self.plt.rc_context({"svg.hashsalt": f"figure-{self.figures}"}):
            fig.savefig(buf, format="svg")
        self.plt.close(fig)
        svg = buf.getvalue()
        svg = svg[svg.index("<svg") :]
        return f'<figure>{svg}<figcaption class="muted">{html.escape(caption)}</figcaption></figure>'

    def _axes(self, rows: int = 1, cols: int = 1, height: float = 2.4, time: bool = True) -> tuple[Any, Any]:
        """A figure of rows x cols axes over the time axis (`time`; ticks on the bottom row only).
        Ticks are placed by hand, few of them: finding and laying them out is most of the cost."""
        from matplotlib.ticker import MaxNLocator

        fig, ax = self.plt.subplots(rows, cols, figsize=(10, height * rows + 0.5), squeeze=False)
        end = max(self.times[-1], 1e-9) if self.times else 1.0
        ticks = [t for t in MaxNLocator(8).tick_values(0, end) if 0 <= t <= end]
        for r, row in enumerate(ax):
            for a in row:
                a.yaxis.set_major_locator(MaxNLocator(4))
                if time:
                    a.set_xlim(0, end)
                    a.set_xticks(ticks if r == rows - 1 else [])
        inches = height * rows + 0.5
        fig.subplots_adjust(left=0.07, right=0.93, bottom=0.45 / inches, top=1 - 0.3 / inches, hspace=0.6, wspace=0.15)
        return fig, ax

    def _time_axis(self, a: Any) -> None:
        start = _stamp(self.series["start"]) if self.series["time"] else ""
        a.set_xlabel(f"{self.unit} since {start} (event time, UTC)")

    def _rate(self, k: dict[str, Any]) -> str:
        fig, ax = self._axes()
        a = ax[0][0]
        a.plot(self.times, _nan(k["events_per_second"]), color="#1565c0", label="events/s")
        a.set_ylabel("events/s")
        errors = [None if e is None or not n else 100 * e / n for e, n in zip(k["errors"], k["events"], strict=True)]
        if any(errors):
            b = a.twinx()
            b.plot(self.times, _nan(errors), color="#c62828", alpha=0.7, label="errors %")
            b.set_ylabel("errors %")
            b.grid(False)
        self._time_axis(a)
        return self._svg(fig, "Events per second of event time (blue) and the share that were errors (red).")

    def _latency(self, k: dict[str, Any]) -> str:
        fig, ax = self._axes()
        a = ax[0][0]
        for q, colour in (("p50", "#1565c0"), ("p95", "#ef6c00"), ("p99", "#c62828")):
            ms = [None if v is None else 1000 * v for v in k["latency_seconds"][q]]
            a.plot(self.times, _nan(ms), label=q, color=colour)
        a.set_ylabel("ms")
        a.legend(loc="upper left")
        self._time_axis(a)
        return self._svg(fig, "Latency quantiles of the events of each point.")

    def _drift(self, k: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
        """A panel per stream that alerted or came near its threshold; the quiet ones together,
        each as its score over its threshold."""
        fired = {a["stream"] for a in alerts}
        near: list[str] = []
        quiet: list[str] = []
        for name, d in k["drift"].items():
            ratios = [s / t for s, t in zip(d["score"], d["threshold"], strict=True) if s is not None and t]
            (near if name in fired or max(ratios, default=0.0) >= NEAR else quiet).append(name)
        panels = near + (["quiet"] if quiet else [])
        cols = 2 if len(panels) > 1 else 1
        rows = math.ceil(len(panels) / cols)
        fig, ax = self._axes(rows, cols, height=1.6)
        for i, name in enumerate(near):
            a = ax[i // cols][i % cols]
            d = k["drift"][name]
            a.plot(self.times, _nan(d["score"]), color="#1565c0", lw=1)
            a.plot(self.times, _nan(d["threshold"]), color="#c62828", ls="--", lw=1)
            for alert in alerts:
                if alert["stream"] == name and alert["timestamp"] is not None:
                    a.axvline(self._x(alert["timestamp"]), color="#c62828", alpha=0.6)
                    a.plot([self._x(alert["timestamp"])], [alert["score"] or 1.0], "v", color="#c62828")
            a.set_title(name, fontsize=9, loc="left")
        if quiet:
            a = ax[len(near) // cols][len(near) % cols]
            for name in quiet:
                d = k["drift"][name]
                ratio = [
                    s / t if s is not None and t else None for s, t in zip(d["score"], d["threshold"], strict=True)
                ]
                a.plot(self.times, _nan(ratio), color="#90a4ae", lw=0.8)
            a.axhline(1.0, color="#c62828", ls="--", lw=1)
            a.set_title(f"{len(quiet)} quiet streams (score / threshold)", fontsize=9, loc="left")
        for j in range(len(panels), rows * cols):
            ax[j // cols][j % cols].set_visible(False)
        self._time_axis(ax[-1][0])
        return self._svg(
            fig,
            "Each stream's highest score at a batch end within the point (blue) and the score at which it "
            "fires (dashed; 1 for the scans, whose score is statistic over threshold); red marks: alerts. "
            f"Streams that never reached {NEAR:.0%} of their threshold share the last panel: " + ", ".join(quiet) + ".",
        )

    def _distribution(self, alert: dict[str, Any]) -> str:
        d = alert["distribution"]
        if "levels" in d:
            labels = [str(x) for x in d["levels"]]
        else:
            e = [f"{x:.4g}" for x in d["edges"]]
            labels = [f"≤ {e[0]}"] if e else ["all"]
            labels += [f"{lo}–{hi}" for lo, hi in itertools.pairwise(e)]
            labels += [f"> {e[-1]}"] if e else []
        fig, ax = self._axes(height=2.2, time=False)
        a = ax[0][0]
        x = list(range(len(labels)))
        a.bar([i - 0.2 for i in x], d["reference_share"], width=0.4, label="before (reference)", color="#90a4ae")
        a.bar([i + 0.2 for i in x], d["window_share"], width=0.4, label="after (window)", color="#c62828")
        a.set_xticks(x, labels, rotation=20 if len(labels) > 6 else 0, fontsize=8)
        a.set_ylabel("share")
        a.legend(loc="upper left")
        a.set_title(f"{alert['stream']} at line {alert['index']:,}", fontsize=9, loc="left")
        return self._svg(fig, f"{alert['stream']}: the reference's shares and those of the window that fired.")

    def _accuracy(self, k: dict[str, Any]) -> str:
        fig, ax = self._axes()
        a = ax[0][0]
        a.plot(self.times, _nan(k["accuracy"]), color="#1565c0", label="accuracy (labels)")
        a.plot(self.times, _nan(k["accuracy_estimated"]), color="#ef6c00", ls="--", label="estimated (no labels)")
        a.set_ylabel("accuracy")
        a.legend(loc="lower left")
        self._time_axis(a)
        return self._svg(fig, "Windowed accuracy from joined labels against the label-free (CBPE) estimate.")

    def _comparison(self, c: dict[str, Any]) -> str:
        title = f"{c['model']}/{c['variant']} vs {c['baseline']}"
        verdicts = [v for v in c["verdict"] if v is not None]
        last = verdicts[-1] if verdicts else "none"
        out = [f'<h3 id="canary-{_slug(c["model"])}-{_slug(c["variant"])}">{html.escape(title)}: '
               f'<span class="{last}">{last}</span></h3>']  # fmt: skip
        names = list(c["metrics"])
        if not names:
            return out[0] + '<p class="muted">No metric has been read yet.</p>'
        fig, ax = self._axes(height=0.5)
        _verdict_strip(ax[0][0], self.times, c["verdict"])
        self._time_axis(ax[0][0])
        out.append(self._svg(fig, "The comparison's verdict over time: pass green, inconclusive grey, fail red."))
        cols = 2
        rows = math.ceil(len(names) / cols)
        fig, ax = self._axes(rows, cols, height=1.6)
        for i, name in enumerate(names):
            a = ax[i // cols][i % cols]
            m = c["metrics"][name]
            conv = _percent if m["scale"] == "log" else (lambda v: v)
            effect, lower, upper = (
                [None if v is None else conv(v) for v in m[f]] for f in ("effect", "lower", "upper")
            )
            a.fill_between(self.times, _nan(lower), _nan(upper), color="#90caf9", alpha=0.6, lw=0)
            a.plot(self.times, _nan(effect), color="#1565c0", lw=1)
            tol = conv(m["tolerance"])
            for side in {"higher": (1,), "lower": (-1,), "either": (1, -1)}[m["worse"]]:
                a.axhline(side * tol, color="#c62828", ls="--", lw=1)
            a.set_title(f"{name} ({'%' if m['scale'] == 'log' else 'difference'})", fontsize=9, loc="left")
            _verdict_ticks(a, self.times, m["verdict"])
        for j in range(len(names), rows * cols):
            ax[j // cols][j % cols].set_visible(False)
        self._time_axis(ax[-1][0])
        out.append(
            self._svg(
                fig,
                "Per metric: the candidate's effect against the baseline (line; % for times, which are compared "
                "on the log scale), its anytime-valid band (shaded), the tolerance on the side that fails "
                "(dashed), and the metric's verdict at each point (marks along the bottom).",
            )
        )
        return "\n".join(out)


# -- helpers ------------------------------------------------------------------------------------


def _verdict_strip(a: Any, times: Sequence[float], verdicts: Sequence[str | None]) -> None:
    """Each point's verdict over the time it covers (from the point before)."""
    for i, (t, v) in enumerate(zip(times, verdicts, strict=True)):
        if v is not None:
            a.axvspan(times[i - 1] if i else 0.0, t, color=COLOURS[v], lw=0)
    a.set_yticks([])
    a.grid(False)


def _verdict_ticks(a: Any, times: Sequence[Any], verdicts: Sequence[str | None]) -> None:
    for v, colour in COLOURS.items():
        at = [t for t, x in zip(times, verdicts, strict=True) if x == v]
        if at:
            a.plot(at, [0] * len(at), "|", color=colour, transform=a.get_xaxis_transform(), ms=8)


def _alert_table(alerts: list[dict[str, Any]]) -> str:
    rows = []
    for a in alerts:
        d = a.get("details") or {}
        stat, thr = d.get("statistic"), d.get("threshold")
        rows.append(
            f"<tr><td>{html.escape(a['stream'])}</td><td>{_stamp(a['timestamp'])}</td><td>{a['index']:,}</td>"
            f"<td>{html.escape(str(d.get('test', a['detector'])))}</td><td>{_num(stat)}</td><td>{_num(thr)}</td>"
            f"<td>{html.escape(_how(a).lstrip(': '))}</td></tr>"
        )
    names = ("stream", "when", "line", "test", "statistic", "threshold", "change")
    head = "<tr>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    return f'<table class="alerts">{head}{"".join(rows)}</table>'


def _how(a: dict[str, Any]) -> str:
    d = a.get("details") or {}
    if d.get("mean_shift_sd") is not None:
        return f": mean moved by {d['mean_shift_sd']:+.2f} sd, sd ×{d['sd_ratio']:.2f}"
    if d.get("levels"):
        top = d["levels"][0]
        return f": level {top['level']} {100 * top['reference_share']:.1f}% → {100 * top['window_share']:.1f}%"
    return ""


def _percent(v: float) -> float:
    return 100 * math.expm1(v)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _date(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)


def _stamp(t: float | None) -> str:
    return "(no time)" if t is None else _date(t).strftime("%Y-%m-%d %H:%M:%S")


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _num(x: Any) -> str:
    return "" if x is None else f"{x:.4g}"


def _ident(k: dict[str, Any]) -> tuple[str, str, str]:
    return (k["model"], k["version"], k["variant"])


def _name(k: dict[str, Any]) -> str:
    return f"{k['model']} v{k['version']} {k['variant']}"


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s)


def _anchor(k: dict[str, Any]) -> str:
    return "key-" + "-".join(_slug(x) for x in _ident(k))
