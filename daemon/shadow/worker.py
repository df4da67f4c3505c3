"""The shadow runner process: a request (JSON) on stdin, its answer (JSON) on stdout.

daemon.shadow.service starts it with the thread budget in its environment (OMP_NUM_THREADS and
friends), so a run takes neither the daemon's GIL nor more than shadow.threads cores; it also
lowers its own priority (shadow.nice) and dies with its parent (Linux), so a daemon killed with
SIGKILL leaves no run behind. Logs go to stderr, in the daemon's format.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from daemon.config import ShadowConfig
from daemon.monitors.reservoir import Sample
from daemon.runtime.lifecycle import die_with_parent
from daemon.runtime.logs import configure


def answer(request: dict[str, Any]) -> dict[str, Any]:
    shadow = ShadowConfig.model_validate(request["shadow"])
    if request["mode"] == "validate":
        from daemon.shadow.models import validate

        return {"errors": validate(shadow)}
    from daemon.shadow.runner import run

    samples = {model: [Sample(*row) for row in rows] for model, rows in request["samples"].items()}
    return run(shadow, samples)


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    die_with_parent(request["parent"])
    configure(request.get("log_level", "info"), request.get("log_format", "json"))
    nice = int(request["shadow"].get("nice", 0))
    if nice:
        os.nice(nice)
    sys.stdout.write(json.dumps(answer(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
