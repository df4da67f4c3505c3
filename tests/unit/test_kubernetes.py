"""deploy/kubernetes/base: the kustomize base runs inferwatch as a native sidecar, wired to its config and scraped."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

from daemon.config import Config, load

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
BASE = KUBE / "base"
SIDECAR = "inferwatch"
IMAGE = "ghcr.io/inferwatch/inferwatch"
# The model server's drain time that deployment.yaml's terminationGracePeriodSeconds allows for.
APP_DRAIN_SECONDS = 30.0
# docs/operations.md: keep the grace period above shutdown_timeout_seconds + 5 s + poll_timeout_ms.
SHUTDOWN_SLACK_SECONDS = 5.0


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kustomization() -> dict[str, Any]:
    (doc,) = _yaml_docs(BASE / "kustomization.yaml")
    return doc


def _generator_files(gen: dict[str, Any]) -> dict[str, Path]:
    """A configMapGenerator's `files`: key -> source path (an entry is `path` or `key=path`)."""
    out: dict[str, Path] = {}
    for entry in gen.get("files", []):
        key, _, src = entry.rpartition("=")
        out[key or PurePosixPath(src).name] = BASE / src
    return out


def _resources() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in _kustomization()["resources"]:
        docs.extend(_yaml_docs(BASE / name))
    return docs


def _one(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [d for d in (_resources() if docs is None else docs) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _sidecar() -> dict[str, Any]:
    matches = [c for c in _pod_spec().get("initContainers", []) if c["name"] == SIDECAR]
    assert len(matches) == 1, "inferwatch must be one initContainers entry"
    return matches[0]


def _config_path() -> Path:
    (gen,) = [g for g in _kustomization()["configMapGenerator"] if g["name"] == "inferwatch-config"]
    return _generator_files(gen)["config.yaml"]


def _sidecar_env() -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in _sidecar().get("env", []) if "value" in e}


def _config() -> Config:
    return load(_config_path(), environ=_sidecar_env())


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of {container['name']}: {sorted(named)}"
    return int(named[port])


def _metrics_port(container: dict[str, Any]) -> int:
    return _container_port(container, "metrics")


def _arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from args {args}"
    return args[args.index(flag) + 1]


def _mount_for(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount whose mountPath holds `path` (the deepest one)."""
    target = PurePosixPath(path)
    mounts = [
        m for m in container.get("volumeMounts", []) if PurePosixPath(m["mountPath"]) in (target, *target.parents)
    ]
    assert mounts, f"nothing of {container['name']} is mounted at or above {path}"
    return max(mounts, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))


def _volume(name: str) -> dict[str, Any]:
    (vol,) = [v for v in _pod_spec()["volumes"] if v["name"] == name]
    return vol


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", KUBE / "generate_prometheusrule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the kustomization


def test_kustomization_lists_every_file_and_every_file_exists() -> None:
    k = _kustomization()
    listed = {BASE / r for r in k["resources"]}
    for gen in k.get("configMapGenerator", []):
        listed |= set(_generator_files(gen).values())
    missing = sorted(p.name for p in listed if not p.is_file())
    assert not missing, f"listed in kustomization.yaml but missing: {missing}"
    on_disk = {p for p in BASE.iterdir() if p.suffix in (".yaml", ".yml")} - {BASE / "kustomization.yaml"}
    unlisted = sorted(p.name for p in on_disk - listed)
    assert not unlisted, f"YAML in base/ that kustomization.yaml does not list: {unlisted}"


def test_every_resource_has_the_expected_kinds() -> None:
    kinds = sorted(d["kind"] for d in _resources())
    assert kinds == ["Deployment", "PrometheusRule", "Service", "ServiceMonitor"]


# ---- the sidecar


def test_inferwatch_is_a_native_sidecar_not_an_app_container() -> None:
    sidecar = _sidecar()
    assert sidecar.get("restartPolicy") == "Always", "a native sidecar is an initContainer with restartPolicy Always"
    assert sidecar["image"].rpartition(":")[0] == IMAGE
    assert SIDECAR not in [c["name"] for c in _pod_spec()["containers"]]
    assert not any(c["image"].startswith(IMAGE) for c in _pod_spec()["containers"])
    # The image's entrypoint is `inferwatch`; the args must run the daemon.
    assert sidecar["args"][0] == "run"
    assert "command" not in sidecar, "keep the image's entrypoint"


def test_probes_hit_healthz_and_readyz_on_the_metrics_port() -> None:
    sidecar = _sidecar()
    port = _metrics_port(sidecar)
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        if probe == "startupProbe" and probe not in sidecar:
            continue
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must GET {path}"
        assert _container_port(sidecar, get["port"]) == port, f"{probe} must target the metrics port"


def test_sidecar_runs_unprivileged_as_the_image_user() -> None:
    sc = _sidecar()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001, "the Dockerfile's USER"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    seccomp = sc.get("seccompProfile") or _pod_spec().get("securityContext", {}).get("seccompProfile")
    assert seccomp == {"type": "RuntimeDefault"}


def test_dockerfile_user_is_the_uid_the_pod_runs_as() -> None:
    users = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users, "the Dockerfile sets no USER"
    assert users[-1].partition(":")[0] == str(_sidecar()["securityContext"]["runAsUser"])


def test_memory_request_equals_limit_and_cpu_is_requested() -> None:
    resources = _sidecar()["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert resources["requests"].get("cpu"), "the sidecar needs a CPU request"


def test_config_file_is_mounted_from_the_configmap_where_the_args_point() -> None:
    sidecar = _sidecar()
    config = PurePosixPath(_arg_after(sidecar["args"], "--config"))
    mount = _mount_for(sidecar, str(config))
    assert mount.get("readOnly") is True
    volume = _volume(mount["name"])
    assert volume["configMap"]["name"] == "inferwatch-config", "the configMapGenerator's name"
    # The file name under the mount is a key of the generated ConfigMap (or an item's path).
    relative = config.relative_to(mount["mountPath"]).as_posix()
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = items.get(relative, relative)
    assert key == "config.yaml", f"{config} is not the ConfigMap's config.yaml"
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"


def test_state_directory_is_a_writable_volume() -> None:
    sidecar = _sidecar()
    history = _config().shadow.history_file
    assert PurePosixPath(history).is_absolute(), "a relative history_file lands on the read-only root filesystem"
    mount = _mount_for(sidecar, history)
    assert mount["mountPath"] == "/var/lib/inferwatch"
    assert not mount.get("readOnly")
    volume = _volume(mount["name"])
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_grace_period_leaves_the_sidecar_its_shutdown_deadline_after_the_app() -> None:
    cfg = _config()
    need = (
        APP_DRAIN_SECONDS
        + cfg.lifecycle.shutdown_timeout_seconds
        + SHUTDOWN_SLACK_SECONDS
        + cfg.source.kafka.poll_timeout_ms / 1000
    )
    grace = _pod_spec().get("terminationGracePeriodSeconds", 30)
    assert grace >= need, f"terminationGracePeriodSeconds {grace} < {need}"


# ---- the config


def test_configmap_config_loads_with_the_sidecar_env() -> None:
    env = _sidecar_env()
    assert env.get("INFERWATCH__SOURCE__KAFKA__BOOTSTRAP_SERVERS"), "the brokers come from the env"
    cfg = _config()
    assert cfg.http.host == "0.0.0.0", "the kubelet and Prometheus connect to the Pod IP"
    assert cfg.source.kafka.topics and cfg.source.kafka.group_id
    assert list(cfg.source.kafka.bootstrap_servers) == env["INFERWATCH__SOURCE__KAFKA__BOOTSTRAP_SERVERS"].split(",")
    # Alone too: the file itself is valid.
    load(_config_path(), environ={})


def test_configmap_config_passes_check_config() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERWATCH__")} | _sidecar_env()
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(_config_path())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_http_port_is_the_container_port() -> None:
    assert _config().http.port == _metrics_port(_sidecar())


# ---- Service and ServiceMonitor


def test_service_selects_the_pods_and_exposes_the_metrics_port() -> None:
    service = _one("Service")
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert "metrics" in ports
    sidecar = _sidecar()
    assert _container_port(sidecar, ports["metrics"].get("targetPort", ports["metrics"]["port"])) == _metrics_port(
        sidecar
    )
    (app,) = _pod_spec()["containers"]
    app_ports = {p["containerPort"] for p in app["ports"]}
    assert any(_container_port(app, p.get("targetPort", p["port"])) in app_ports for p in ports.values())


def test_service_monitor_selects_the_service_and_scrapes_metrics() -> None:
    monitor = _one("ServiceMonitor")
    service = _one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    match = monitor["spec"]["selector"]["matchLabels"]
    assert match and match.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"


# ---- PrometheusRule


def test_prometheusrule_is_the_generators_output() -> None:
    committed = (BASE / "prometheusrule.yaml").read_text()
    assert committed == _load_generator().render(), (
        "deploy/kubernetes/base/prometheusrule.yaml is stale: run python deploy/kubernetes/generate_prometheusrule.py"
    )
    rule = _one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert isinstance(rule["spec"]["groups"], list)


def test_generator_copies_every_group_in_file_order(tmp_path: Path) -> None:
    gen = _load_generator()
    empty = yaml.safe_load(gen.render(tmp_path))
    assert empty["kind"] == "PrometheusRule" and empty["spec"]["groups"] == []
    b = {"groups": [{"name": "b", "rules": [{"alert": "B", "expr": "up == 0\n  and on() vector(1)\n", "for": "5m"}]}]}
    a = {"groups": [{"name": "a", "interval": "1m", "rules": [{"record": "x:y", "expr": "sum(up)"}]}]}
    (tmp_path / "b.yml").write_text(yaml.safe_dump(b))
    (tmp_path / "a.yml").write_text(yaml.safe_dump(a))
    (tmp_path / "notes.txt").write_text("not a rule file")
    rendered = yaml.safe_load(gen.render(tmp_path))
    assert rendered["spec"]["groups"] == a["groups"] + b["groups"]


def test_generator_rejects_duplicate_groups_and_non_rule_files(tmp_path: Path) -> None:
    gen = _load_generator()
    group = {"groups": [{"name": "same", "rules": []}]}
    (tmp_path / "a.yml").write_text(yaml.safe_dump(group))
    (tmp_path / "b.yml").write_text(yaml.safe_dump(group))
    with pytest.raises(ValueError, match="same"):
        gen.render(tmp_path)
    (tmp_path / "b.yml").write_text(yaml.safe_dump({"rule_files": ["x"]}))
    with pytest.raises(ValueError, match="groups"):
        gen.render(tmp_path)


# ---- rendered by kustomize itself, where kubectl is installed


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_renders_and_wires_the_hashed_configmap() -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    configmap = _one("ConfigMap", docs)
    assert configmap["metadata"]["name"].startswith("inferwatch-config-"), "kustomize appends the content hash"
    assert configmap["data"]["config.yaml"] == _config_path().read_text()
    pod = _one("Deployment", docs)["spec"]["template"]["spec"]
    referenced = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert configmap["metadata"]["name"] in referenced
