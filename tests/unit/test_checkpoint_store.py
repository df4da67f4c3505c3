"""The local checkpoint store: one file per partition, atomic replacement, and clear refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError, from_mapping
from daemon.state.checkpoint import CheckpointError, LocalCheckpoints


def _snapshot(n: int, partitions: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    return {
        "process": {"n": n},
        "partitions": {str(p): {"partition": p, "offsets": [["t", n]], "n": n} for p in partitions},
    }


def test_save_replaces_the_files_whole_and_load_gives_each_partition_back(tmp_path: Path) -> None:
    store = LocalCheckpoints(tmp_path / "state", "g")
    assert store.load([0, 1]) == {} and store.load_process() is None  # no checkpoint yet: start empty
    store.save(_snapshot(1))
    store.save(_snapshot(2))
    assert store.load([1, 7]) == {1: {"partition": 1, "offsets": [["t", 2]], "n": 2}}
    assert store.load_process() == {"n": 2}
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["partition-0.json", "partition-1.json", "process.json"]  # no temporary left


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalCheckpoints(tmp_path, "g")
    store.save(_snapshot(1, (0,)))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the temporary file is written
    with pytest.raises(OSError, match="No space left"):
        store.save(_snapshot(2, (0,)))
    monkeypatch.undo()
    assert store.load([0])[0]["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partition-0.json", "process.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        (json.dumps({"hello": 1}), "is not an inferwatch checkpoint"),
        (json.dumps({"format": "inferwatch-checkpoint", "group_id": "other", "state": {}}), "consumer group 'other'"),
    ],
)
def test_unusable_checkpoints_are_refused_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "partition-3.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as err:
        LocalCheckpoints(tmp_path, "g").load([3])
    assert str(tmp_path / "partition-3.json") in str(err.value)


def test_a_checkpoint_of_the_first_format_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text("{}")
    config = from_mapping({"checkpoint": {"directory": str(tmp_path)}, "http": {"port": 0}})
    from daemon.runtime.app import Daemon

    with pytest.raises(ConfigError, match="checkpoint of an older inferwatch"):
        Daemon(config)


def test_the_daemon_refuses_to_start_on_a_checkpoint_of_a_newer_format(tmp_path: Path) -> None:
    from daemon.pipeline import SNAPSHOT_VERSION
    from daemon.runtime.app import Daemon

    LocalCheckpoints(tmp_path, "inferwatch").save({"process": {"version": 99}, "partitions": {}})
    config = from_mapping({"checkpoint": {"directory": str(tmp_path)}, "http": {"port": 0}})
    with pytest.raises(ConfigError, match=f"checkpoint version 99 is not {SNAPSHOT_VERSION}"):
        Daemon(config)
