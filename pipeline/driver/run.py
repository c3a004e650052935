"""Child process entry: ``python -m pipeline.driver.run CONFIG.json``.

python-pkcs11 can load one PKCS#11 library per process, and the spy reads ``PKCS11SPY*`` once,
when it is loaded; so every workload process is a fresh interpreter started by
`pipeline.driver.drive` with the spy's environment already set.  It runs its plan and writes its
part of the truth to the JSON path named in the config.  Exit 0 when the plan ran (whatever the
token answered), 3 when the library or token could not be reached (message on stderr, one line).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline.driver.truth import write_json
from pipeline.driver.workloads import OpLock, Runner

EXIT_FATAL = 3
log = logging.getLogger("p11lens.driver.run")


class Fatal(Exception):
    """The library or the token is unreachable: nothing after this step can work."""


def run_plan(runner: Runner, plan: dict[str, Any]) -> None:
    for n, step in enumerate(plan["setup"]):
        op = runner.run_step(step, 0, n)
        if step["op"] in ("load", "get_token") and not op.as_expected:
            raise Fatal(f"{step['op']} failed: {op.error or op.got_rv['name']}")
    _run_workers(runner, plan["workers"])
    runner.run_steps(plan["teardown"], 0)


def _run_workers(runner: Runner, workers: list[list[dict[str, Any]]]) -> None:
    """Start every worker thread together; each step still runs alone, under the runner's lock."""
    if not workers:
        return
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def work(index: int, steps: list[dict[str, Any]]) -> None:
        try:
            barrier.wait()
            runner.run_steps(steps, index)
        except BaseException as exc:  # surfaced by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i + 1, s), name=f"p11lens-worker-{i + 1}") for i, s in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="p11lens: %(message)s", stream=sys.stderr)
    config = json.loads(Path(argv[0]).read_text())
    logging.getLogger().setLevel(config.get("log_level", logging.WARNING))
    runner = Runner(spy=Path(config["spy"]), trace=Path(config["trace"]), token_label=config["token_label"],
                    pins=config["pins"], process=config["process"],
                    lock=OpLock(Path(config["lock"]) if config.get("lock") else None))
    try:
        run_plan(runner, config["plan"])
        status = 0
    except Fatal as exc:
        print(f"p11lens: {exc}", file=sys.stderr)
        status = EXIT_FATAL
    write_json(Path(config["out"]), {
        "process": runner.process, "pid": runner.pid, "status": status, "ops": runner.ops,
        "sessions": list(runner.session_truth.values()), "auth": runner.auth, "library": runner.library,
    })
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
