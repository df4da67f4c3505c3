"""Checkpoints in a local directory: the pipeline's whole state with the offsets it reflects.

For single-replica setups (issue 7 adds a compacted-topic store, so state follows partitions to
another replica). One file, `checkpoint.json`, replaced atomically (write a temporary file in the
same directory, fsync, rename), so a crash leaves the previous checkpoint or the new one, never
half of one. The daemon writes it before it commits the same offsets, so a restore never misses
an event the broker thinks was processed, and resumes at the checkpoint's offsets, so it counts
none twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from daemon.files import write_atomically

FORMAT = "inferwatch-checkpoint"
FILE = "checkpoint.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be read: the message says which file and why."""


class LocalCheckpoints:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE

    def save(self, pipeline_state: dict[str, Any], group_id: str) -> float:
        """Write atomically; returns the seconds it took."""
        t0 = time.perf_counter()
        body = {"format": FORMAT, "group_id": group_id, "written_at": time.time(), "pipeline": pipeline_state}
        write_atomically(self.path, json.dumps(body, separators=(",", ":")))
        return time.perf_counter() - t0

    def load(self, group_id: str) -> dict[str, Any] | None:
        """The pipeline state of the last checkpoint; None when there is none yet."""
        try:
            body = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {self.path} cannot be read ({exc}); move it away to start afresh"
            ) from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not an inferwatch checkpoint; move it away to start afresh")
        if body.get("group_id") != group_id:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to consumer group {body.get('group_id')!r}, not {group_id!r}: its "
                "offsets mean nothing to this group; point checkpoint.directory elsewhere or move it away"
            )
        state: dict[str, Any] = body["pipeline"]
        return state
