"""Following a bot's ``current`` version: the running server switches models by itself.

``chattune serve --registry models --bot pine`` serves the version that ``models/pine/current``
names. A :class:`Follower` (a daemon thread, started and stopped with the app's lifespan)
reads that file every ``interval`` seconds (one small read). When the number changes, by a
promotion or a rollback, it loads the new version's engine **in its own thread** while the
old one keeps answering, then swaps it into the service:

- **Between requests.** A request keeps the engine (and version label) it started with,
  from prepare to the stored reply (see :mod:`chattune.serve.live`): requests admitted
  during the load are answered by the old version, requests after the swap by the new one,
  and none fails or sees a half-loaded model. The old engine's backend is closed when the
  last request using it has ended.
- **A version that fails to load** is logged and the old one keeps serving. The follower
  does not hot-loop on it: it tries again when ``current`` names another version, or
  after ``retry_after`` seconds, doubling on each failure (a transient failure, a file
  still being copied, may pass later; a corrupt folder never will, and is not retried
  every two seconds). The old model stays loaded during a load, so a version that does
  not fit in memory beside it will not fit on a retry either.
- **Superseded while loading.** If ``current`` changed again during a load, the loaded
  engine is closed unused and the next look loads the newest version: the server never
  switches to a version that is no longer current.

Example:
    >>> bot = Registry("models").bot("pine")                              # doctest: +SKIP
    >>> follower = Follower(bot, load=lambda v: engine_for(str(v.model_dir), profile),
    ...                     interval=2.0, serving=bot.current_number())
    >>> app = build_app(engine, store, "pine", version="pine-v3", follower=follower)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chattune.chat.engine import ChatEngine
    from chattune.learn.registry import Bot, Version

log = logging.getLogger(__name__)

#: What a follower swaps a loaded engine in with: ``ChatService.swap(engine, label)``.
Swap = Callable[["ChatEngine", str], None]
#: Longest wait before a version that failed to load is tried again.
MAX_RETRY_AFTER = 3600.0


class Follower:
    """Polls ``bot.current_number()`` and swaps each newly current version in.

    Args:
        bot: the registry bot whose ``current`` is followed.
        load: builds a version's engine (blocking: seconds to minutes); any exception is a
            failed load.
        interval: seconds between looks at ``current``.
        serving: the version number being served already (None: load whatever is current).
        retry_after: seconds before a version that failed to load is tried again
            (doubling on each further failure, up to :data:`MAX_RETRY_AFTER`).
    """

    def __init__(
        self,
        bot: Bot,
        load: Callable[[Version], ChatEngine],
        interval: float = 2.0,
        serving: int | None = None,
        retry_after: float = 60.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be over 0 seconds, got {interval}")
        self.bot, self.load, self.interval = bot, load, interval
        self.serving, self.retry_after = serving, retry_after
        self.attempts = 0  # loads tried, failed or not: what tests and logs count
        self._broken: tuple[int, int, float] | None = None  # (number, failures, retry at)
        self._stop = threading.Event()
        self._tried = threading.Condition()
        self._thread: threading.Thread | None = None

    # ----- the thread ---------------------------------------------------------------------

    def start(self, swap: Swap) -> None:
        """Follow in a daemon thread, swapping loaded engines in with ``swap``."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(swap,), name=f"follow-{self.bot.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following. A load in progress cannot be interrupted: the thread is left to
        finish it (it is a daemon) and closes what it loaded instead of swapping it in."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, swap: Swap) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check(swap)
            except Exception:  # the thread must outlive anything one look can raise
                log.exception("following %s: looking at its current version failed", self.bot.name)

    # ----- one look -----------------------------------------------------------------------

    def check(self, swap: Swap) -> bool:
        """Look at ``current`` once; load and swap in a version that is new and due.
        Blocks while it loads. Returns whether a new version is now served."""
        number = self.bot.current_number()
        if number is None or number == self.serving or not self._due(number):
            return False
        try:
            return self._switch(number, swap)
        finally:
            with self._tried:
                self.attempts += 1
                self._tried.notify_all()

    def _due(self, number: int) -> bool:
        """Whether ``number`` may be loaded now: not the version that failed last, or its
        wait is over."""
        if self._broken is None or self._broken[0] != number:
            return True
        return monotonic() >= self._broken[2]

    def _switch(self, number: int, swap: Swap) -> bool:
        try:
            version = self.bot.version(number)
            log.info("loading %s (serving %s meanwhile)", version.label, self._label(self.serving))
            engine = self.load(version)
        except Exception:
            wait = self._failed(number)
            log.exception("%s-v%d failed to load; %s keeps serving (next try in %.0f s, or "
                          "when current changes)", self.bot.name, number,
                          self._label(self.serving), wait)  # fmt: skip
            return False
        if self._stop.is_set() or self.bot.current_number() != number:
            log.info("%s is no longer current (or the server stops): not served", version.label)
            _close(engine)
            return False
        swap(engine, version.label)
        self.serving, self._broken = number, None
        return True

    def _failed(self, number: int) -> float:
        """Remember that ``number`` failed; return the seconds until it is tried again."""
        failures = self._broken[1] + 1 if self._broken and self._broken[0] == number else 1
        wait = min(self.retry_after * 2 ** (failures - 1), MAX_RETRY_AFTER)
        self._broken = (number, failures, monotonic() + wait)
        return wait

    def _label(self, number: int | None) -> str:
        return "nothing" if number is None else f"{self.bot.name}-v{number}"

    def wait_for_attempts(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` loads have been tried (or ``timeout`` seconds);
        whether they were."""
        with self._tried:
            return self._tried.wait_for(lambda: self.attempts >= count, timeout)


def _close(engine: ChatEngine) -> None:
    try:
        engine.backend.close()
    except Exception:
        log.exception("closing an unused backend failed")
