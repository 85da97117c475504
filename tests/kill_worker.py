"""Train, and ``kill -9`` this process at one named point (used by test_resume.py).

    python tests/kill_worker.py POINT@STEP key=value ...

The ``key=value`` settings are the ones ``chattune train`` accepts; the kill comes from the
run's point hook (``TrainHooks.point``), so no production code looks for it.
"""

import os
import signal
import sys

from chattune.config import build_config
from chattune.train import TrainHooks, run_train


def kill_at(target: str):
    """A point hook that sends SIGKILL to this process when ``name@step`` is ``target``."""

    def point(name: str, step: int) -> None:
        if f"{name}@{step}" == target:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9: no finally, no flush

    return point


def main() -> None:
    target, *settings = sys.argv[1:]
    run_train(build_config(overrides=settings), TrainHooks(point=kill_at(target)))


if __name__ == "__main__":
    main()
