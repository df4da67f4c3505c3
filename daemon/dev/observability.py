"""Real Prometheus and Alertmanager (Debian's packages) as child processes, for the demo and the tests.

Each server binds 127.0.0.1 on a free port, keeps its data under a given directory, runs in its
own session, dies with its parent (whatever killed it) and is killed when its context exits.
Prometheus evaluates the project's rules (deploy/prometheus/rules/) with every alert's `for:`
shortened: the shipped durations (1 to 30 minutes) would keep a demo or a test waiting.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.dev.broker import free_port
from daemon.runtime.lifecycle import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
PROMETHEUS, ALERTMANAGER = "prometheus", "prometheus-alertmanager"


def missing_binaries() -> list[str]:
    """The Debian binaries that are not on PATH (`make tools` installs them)."""
    return [name for name in (PROMETHEUS, ALERTMANAGER) if shutil.which(name) is None]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is missing: `make tools` installs Debian's prometheus and prometheus-alertmanager")
    return path


def shrink_for(rules_file: Path, duration: str, interval: str = "1s") -> str:
    """The rule file with every alert's `for:` set to `duration` and its groups evaluated every
    `interval`: the project's rules, on a shorter clock."""
    doc = yaml.safe_load(rules_file.read_text())
    for group in doc["groups"]:
        group["interval"] = interval
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = duration
    return yaml.safe_dump(doc, sort_keys=False)


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextmanager
def _process(argv: list[str], log: Path, ready_url: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} was not ready within 30 s: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield proc
        finally:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": str(at)} if at is not None else {})}
        body = _get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        if body["status"] != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending or firing alert, with its labels and state."""
        alerts: list[dict[str, Any]] = _get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return alerts


@contextmanager
def prometheus(
    tmp: Path,
    targets: Sequence[str],
    alertmanager: str | None,
    for_: str = "2s",
    scrape: Mapping[str, Any] = {},
    every: str = "1s",
) -> Iterator[Prometheus]:
    """Scrapes `targets` (job "inferwatch", with `scrape`'s further scrape_config keys) and evaluates
    the project's rules every `every`, with every `for:` shrunk to `for_`."""
    tmp.mkdir(parents=True, exist_ok=True)
    rule_files = []
    for f in RULES:
        copy = tmp / f.name
        copy.write_text(shrink_for(f, for_, every))
        rule_files.append(str(copy))
    config: dict[str, Any] = {
        "global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": "inferwatch", "static_configs": [{"targets": list(targets)}], **scrape}],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        _binary(PROMETHEUS),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(argv, tmp / "prometheus.log", f"{url}/-/ready", "prometheus"):
        yield Prometheus(url)


def project_alertmanager_config(receiver_url: str, token_file: Path, group_wait: str) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml (its routes and inhibitions) with the `inferwatch`
    receiver pointed at `receiver_url`, the pager and ticket placeholders left without webhooks
    (alerts routed there are shown, not sent), and every route's group_wait set to `group_wait`."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for route in [config["route"], *config["route"].get("routes", [])]:
        route["group_wait"] = group_wait
    config["route"]["group_interval"] = group_wait
    for receiver in config["receivers"]:
        if receiver["name"] == "inferwatch":
            (hook,) = receiver["webhook_configs"]
            hook["url"] = receiver_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        else:
            receiver.pop("webhook_configs", None)
    return config


@contextmanager
def alertmanager(tmp: Path, config: Mapping[str, Any]) -> Iterator[str]:
    """Alertmanager with `config`; yields its host:port."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    argv = [
        _binary(ALERTMANAGER),
        f"--config.file={tmp / 'alertmanager.yml'}",
        f"--storage.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with _process(argv, tmp / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready", "alertmanager"):
        yield f"127.0.0.1:{port}"


def alertmanager_alerts(address: str) -> list[dict[str, Any]]:
    """The alerts Alertmanager holds (API v2), each with labels and status.state."""
    alerts: list[dict[str, Any]] = _get_json(f"http://{address}/api/v2/alerts")
    return alerts
