"""The local checkpoint store: one binary file per partition, atomic replacement, and clear refusals."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError, from_mapping
from daemon.state import codec
from daemon.state.checkpoint import CheckpointError, LocalCheckpoints


def _snapshot(n: int, partitions: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    return {
        "process": {"n": n},
        "partitions": {str(p): {"partition": p, "offsets": [["t", n]], "n": n} for p in partitions},
    }


def test_save_replaces_the_files_whole_and_load_gives_each_partition_back(tmp_path: Path) -> None:
    store = LocalCheckpoints(tmp_path / "state", "g")
    assert store.load([0, 1]) == {} and store.load_process() is None  # no checkpoint yet: start empty
    store.save(_snapshot(1)).result(10)
    store.save(_snapshot(2)).result(10)
    assert store.load([1, 7]) == {1: {"partition": 1, "offsets": [["t", 2]], "n": 2}}
    assert store.load_process() == {"n": 2}
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["partition-0.ckpt", "partition-1.ckpt", "process.ckpt"]  # no temporary left


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalCheckpoints(tmp_path, "g")
    store.save(_snapshot(1, (0,))).result(10)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the temporary file is written
    with pytest.raises(CheckpointError, match="No space left"):
        store.save(_snapshot(2, (0,))).result(10)
    monkeypatch.undo()
    assert store.load([0])[0]["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partition-0.ckpt", "process.ckpt"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01garbage", "is not an inferwatch checkpoint"),
        (codec.encode({"hello": 1}), "is not an inferwatch checkpoint"),
        (codec.encode({"format": "inferwatch-checkpoint", "group_id": "other", "state": {}}), "consumer group 'other'"),
        (codec.encode({"x": 1})[:-3], "damaged"),
        # The JSON of format 2, plain and zlib-compressed.
        (json.dumps({"format": "inferwatch-checkpoint"}).encode(), "older inferwatch .format 2, JSON"),
        (zlib.compress(json.dumps({"format": "inferwatch-checkpoint"}).encode()), "older inferwatch .format 2, JSON"),
        (codec.MAGIC + bytes([codec.VERSION + 1]) + b"...", f"newer inferwatch .format {codec.VERSION + 1}"),
    ],
)
def test_unusable_checkpoints_are_refused_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "partition-3.ckpt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        LocalCheckpoints(tmp_path, "g").load([3])
    assert str(tmp_path / "partition-3.ckpt") in str(err.value)


@pytest.mark.parametrize("name", ["checkpoint.json", "process.json"])
def test_a_checkpoint_of_an_earlier_format_stops_start_up_clearly(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("{}")  # the first format (one file), and the second (JSON per partition)
    config = from_mapping({"checkpoint": {"directory": str(tmp_path)}, "http": {"port": 0}})
    from daemon.runtime.app import Daemon

    with pytest.raises(ConfigError, match="checkpoint of an older inferwatch"):
        Daemon(config)


def test_the_daemon_refuses_to_start_on_a_checkpoint_of_a_newer_format(tmp_path: Path) -> None:
    from daemon.runtime.app import Daemon

    (tmp_path / "process.ckpt").write_bytes(codec.MAGIC + bytes([codec.VERSION + 1]) + b"...")
    config = from_mapping({"checkpoint": {"directory": str(tmp_path)}, "http": {"port": 0}})
    with pytest.raises(ConfigError, match=f"written by a newer inferwatch .format {codec.VERSION + 1}."):
        Daemon(config)
