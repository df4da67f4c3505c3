"""`inferwatch replay --html` in a real browser (issue 18, part 2): Debian's headless chromium loads
the page from a replay with drift, a failing canary and labels; its DOM holds the sections and the
alerts, its screenshot is not blank, and the file needs nothing from the network."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.dev.generator import TrafficGenerator, TrafficSpec, encode, parse_change

START = 1_764_300_000.0


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[bytes]:
    """Run headless chromium in a session of its own, and kill that session whatever happens: its
    zygote and renderer processes must not outlive the test."""
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: `make test` installs Debian's chromium"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    command += ["--no-proxy-server", f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("html")
    spec = TrafficSpec(
        rate=200,
        duration_s=240,
        seed=3,
        start_time=START,
        changes=(
            parse_change("after=2m model=fraud-detector feature=f0 shift=1"),
            parse_change("after=0 model=fraud-detector variant=canary latency=+20%"),
        ),
    )
    gen = TrafficGenerator(spec)
    events, labels = d / "events.jsonl", d / "labels.jsonl"
    with events.open("wb") as ev, labels.open("wb") as lab:
        for e in gen.events():
            ev.write(encode(e)[1] + b"\n")
            lab.write(encode(gen.label(e))[1] + b"\n")
    out = d / "report.html"
    args = ["replay", str(events), "--labels", str(labels), "--report", str(d / "r.json"), "--html", str(out)]
    assert main(args) == 0
    yield out


def test_the_page_shows_every_section_and_alert_in_a_browser(page: Path, tmp_path: Path) -> None:
    done = chromium(["--dump-dom", page.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    dom = done.stdout.decode()
    text = re.sub(r"<[^>]+>", " ", dom)
    for section in (
        'id="summary"',
        'id="canary"',
        'id="key-fraud-detector-1-control"',
        'id="key-recsys-ranker-1-default"',
    ):
        assert section in dom
    for heading in ("What happened", "Event rate", "Latency quantiles", "Drift: score against threshold",
                    "Drift alerts", "Before and after", "Accuracy", "Canary comparisons"):  # fmt: skip
        assert heading in text, heading
    # The summary says in words which feature drifted, and the canary's verdict.
    summary = text[text.index("What happened") : text.index("Keys:")]
    assert re.search(r"fraud-detector v1 control\s*:\s*feature:f0\s*drifted at", summary)
    assert re.search(r"fraud-detector v2 canary\s*:\s*feature:f0\s*drifted at", summary)
    assert re.search(r"Canary\s*fraud-detector/canary\s*vs control:\s*fail", summary)
    assert "accuracy" in summary and "estimated without labels" in summary
    assert dom.count("<svg") >= 10  # the plots are in the page itself
    assert "<script" not in dom and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", dom)


def test_the_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    from matplotlib import image

    shot = tmp_path / "shot.png"
    done = chromium([f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()], tmp_path / "profile")
    assert done.returncode == 0 and shot.exists(), done.stderr.decode()[-2000:]
    pixels = image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, lines and fills, not one flat colour
    ink = (pixels < 0.9).any(axis=-1).mean()
    assert ink > 0.03, f"only {ink:.1%} of the first screen is drawn on"
