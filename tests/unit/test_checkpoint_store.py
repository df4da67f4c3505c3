"""The local checkpoint file: atomic replacement, and clear refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon.checkpoint import CheckpointError, LocalCheckpoints
from daemon.config import ConfigError, from_mapping


def test_save_replaces_the_file_whole_and_load_gives_the_state_back(tmp_path: Path) -> None:
    store = LocalCheckpoints(tmp_path / "state")
    assert store.load("g") is None  # no checkpoint yet: start empty
    store.save({"version": 1, "n": 1}, "g")
    store.save({"version": 1, "n": 2}, "g")
    assert store.load("g") == {"version": 1, "n": 2}
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["checkpoint.json"]  # no temporary left


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalCheckpoints(tmp_path)
    store.save({"n": 1}, "g")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the temporary file is written
    with pytest.raises(OSError, match="No space left"):
        store.save({"n": 2}, "g")
    monkeypatch.undo()
    assert store.load("g") == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]  # the temporary is gone


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        (json.dumps({"hello": 1}), "is not an inferwatch checkpoint"),
        (
            json.dumps({"format": "inferwatch-checkpoint", "group_id": "other", "pipeline": {}}),
            "consumer group 'other'",
        ),
    ],
)
def test_unusable_checkpoints_are_refused_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "checkpoint.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as err:
        LocalCheckpoints(tmp_path).load("g")
    assert str(tmp_path / "checkpoint.json") in str(err.value)


def test_the_daemon_refuses_to_start_on_a_checkpoint_of_a_newer_format(tmp_path: Path) -> None:
    from daemon.app import Daemon

    LocalCheckpoints(tmp_path).save({"version": 2}, "inferwatch")
    config = from_mapping({"checkpoint": {"directory": str(tmp_path)}, "http": {"port": 0}})
    with pytest.raises(ConfigError, match="checkpoint version 2 is not 1"):
        Daemon(config)
