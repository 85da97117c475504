"""The llama.cpp backend: GGUF files, KV cache reuse across turns, batched conversations.

The model runs in a worker process (:mod:`chattune.backends.llama_worker`) that decodes
every active conversation in one batch and keeps each slot's KV cache for the next turn.
This side speaks JSON lines to it over two pipes; the requests waiting for pieces take
turns reading the event pipe and hand each step's pieces to the request they belong to.
If the worker dies (a crash in native code, the OOM killer), every request in flight fails
with :class:`BackendCrashed` and the next one starts a new worker: the server stays up. A
worker that hangs (sends nothing to anyone for ``token_timeout``, or stops reading its
commands) is killed, which makes it one that died.

Example:
    >>> backend = LlamaCppBackend(Path("bot.gguf"), tokenizer, slots=8)  # doctest: +SKIP
    >>> "".join(backend.stream(ids, GenerationOptions(), [], threading.Event()))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.backends.base import BackendCrashed, BackendError, BackendTimeout
from chattune.errors import ModelError
from chattune.model.generation import Generated, GenerationOptions, end_of_turn_ids

log = logging.getLogger(__name__)

#: How long a stream reading the pipe waits for data before it looks at its cancel event,
#: and how long one waiting for the reading thread sleeps before it tries to read itself
#: (seconds; a reader that leaves hands its turn over at once, this is a safety net).
POLL, FOLLOW = 0.02, 0.05
#: Seconds a command may wait for room in the worker's pipe before the worker counts as hung.
SEND_TIMEOUT = 30.0


@dataclass(frozen=True)
class WorkerSettings:
    """How the worker runs the model: the settings of ``--backend llama.cpp``."""

    slots: int = 4  # conversations decoded together, each with its own KV cache
    context: int = 4096  # tokens per conversation (capped at the model's training context)
    threads: int = 0  # 0: every core
    batch: int = 512  # tokens per llama_decode
    flash_attn: bool = True
    start_timeout: float = 120.0


class _Worker:
    """One worker process, and the routing of its events to the requests in flight.

    There is no reader thread: a request waiting for its next piece reads the pipe itself
    when no other thread is reading it, and routes every line to the request it belongs to
    ("leader/follower"); the others wait on their inboxes. A lone stream so takes its pieces
    straight from the pipe, one thread wake-up a token fewer (measured: about 3% of a 6 ms
    token on a 2-core CPU, where those wake-ups compete with the decoding threads).
    """

    def __init__(self, gguf: Path, settings: WorkerSettings) -> None:
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        threads = settings.threads or len(os.sched_getaffinity(0))
        args = [sys.executable, "-m", "chattune.backends.llama_worker", "--model", str(gguf),
                "--commands-fd", str(cmd_r), "--events-fd", str(ev_w),
                "--slots", str(settings.slots), "--context", str(settings.context),
                "--threads", str(threads), "--batch", str(settings.batch),
                "--flash-attn", str(int(settings.flash_attn))]  # fmt: skip
        self.process = subprocess.Popen(args, pass_fds=(cmd_r, ev_w), stdin=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(ev_w)
        os.set_blocking(cmd_w, False)  # a hung worker must not block a sender for ever
        self.commands = cmd_w
        self.events, self.pending = ev_r, b""  # the event pipe, and a line begun but not ended
        self.last_event = time.monotonic()  # when the worker last said anything
        self.lock = threading.Lock()  # one writer at a time on the command pipe
        self.reading = threading.Lock()  # one reader at a time on the event pipe
        self.queues: dict[int, queue.Queue[tuple[Any, ...]]] = {}
        self.ended = False  # the event pipe reached its end: the process is gone
        self.closed = False  # stop() closed both pipes (their numbers may be reused)
        self.gguf, self.start_timeout = gguf, settings.start_timeout
        self.info: dict[str, Any] | None = None
        self.max_batch = 0  # the most conversations one decode has batched

    @property
    def alive(self) -> bool:
        return not self.ended and self.process.poll() is None

    def wait_ready(self) -> dict[str, Any]:
        """Wait for the model to load (the process starts loading it at once); a clear
        error if it cannot."""
        if self.info is not None:
            return self.info
        deadline = time.monotonic() + self.start_timeout
        while not self.ended and b"\n" not in self.pending and time.monotonic() < deadline:
            self._fill(min(1.0, max(0.0, deadline - time.monotonic())))
        line, _, self.pending = self.pending.partition(b"\n")
        message = json.loads(line) if line.strip() else {}
        if message.get("op") != "ready":
            self.stop()
            why = message.get("error") or (
                self._exit_text() if self.ended else f"no answer in {self.start_timeout:g} s"
            )
            raise ModelError(f"{self.gguf}: the llama.cpp worker did not start: {why}")
        self.info = message
        return message

    def _exit_text(self) -> str:
        code = self.process.wait(timeout=10)
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _fill(self, timeout: float) -> None:
        """Read what the pipe has (waiting at most ``timeout`` s) into ``pending``."""
        if self.ended or self.closed:
            self.ended = True
            return
        ready, _, _ = select.select([self.events], [], [], timeout)
        if ready:
            data = os.read(self.events, 1 << 16)
            self.pending += data
            self.ended = not data
            self.last_event = time.monotonic()

    def hung(self, seconds: float) -> bool:
        """Whether the worker, alive, has sent nothing to anyone for ``seconds``."""
        return self.alive and time.monotonic() - self.last_event >= seconds

    def kill(self, why: str) -> None:
        """End a hung worker: reading its pipe then fails every request still waiting."""
        log.error("llama.cpp worker %s: killing it", why)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)  # so that ``alive`` says so at once

    def hand_over(self) -> None:
        """A request leaves: wake one that is waiting, so it reads the pipe now."""
        for inbox in list(self.queues.values()):
            inbox.put(("lead",))
            return

    def route(self, timeout: float) -> bool:
        """Read and route the worker's events for up to ``timeout`` s, unless another
        thread is reading (then False: wait on your inbox, it fills it)."""
        if not self.reading.acquire(blocking=False):
            return False
        try:
            self._fill(timeout)
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                self._dispatch(json.loads(line))
            if self.ended:
                self._fail_all()
            return True
        finally:
            self.reading.release()

    def _dispatch(self, message: dict[str, Any]) -> None:
        self.max_batch = max(self.max_batch, message.get("seqs", 0))
        for rid in message.get("admitted", []):
            self._put(rid, ("admitted",))
        for rid, text in message["pieces"]:
            self._put(rid, ("piece", text))
        for rid, reason, n_tokens, n_prefilled in message["done"]:
            self._put(rid, ("done", reason, n_tokens, n_prefilled))
        for rid, error in message["errors"]:
            self._put(rid, ("error", error))

    def _fail_all(self) -> None:
        why = self._exit_text()
        if self.queues:
            log.error("llama.cpp worker died (%s); %d requests failed", why, len(self.queues))
        for q in list(self.queues.values()):
            q.put(("crash", why))

    def _put(self, rid: int, item: tuple[Any, ...]) -> None:
        q = self.queues.get(rid)
        if q is not None:
            q.put(item)

    def send(self, message: dict[str, Any]) -> None:
        """Write one command; a worker that leaves it unread for SEND_TIMEOUT is killed."""
        data = memoryview(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        deadline = time.monotonic() + SEND_TIMEOUT
        with self.lock:
            while data and not self.closed:
                try:
                    data = data[os.write(self.commands, data) :]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([], [self.commands], [], left)[1]:
                        return self.kill("reads no commands")
                except OSError:  # gone: reading its pipe reports that to every request
                    return

    def stop(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            os.close(self.commands)  # the worker exits when its command pipe closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with self.reading:  # not while another thread reads it
            os.close(self.events)


def start_worker(gguf: Path, settings: WorkerSettings) -> _Worker:
    """Start a worker process loading ``gguf``; returns at once."""
    return _Worker(Path(gguf), settings)


class LlamaCppBackend:
    """Generate with llama.cpp in a worker process; implements the ``Backend`` protocol.

    Args:
        gguf: the model file.
        tokenizer: its Hugging Face tokenizer (the engine renders prompts with its chat
            template and sends token ids; see ``model.loading.gguf_tokenizer``).
        settings: slots, context, threads (:class:`WorkerSettings`).
        token_timeout: seconds a stream waits for its next piece before giving up.
        worker: one :func:`start_worker` began, so the model loads while the caller
            loads the tokenizer (a faster cold start).
    """

    name = "llama.cpp"

    def __init__(
        self,
        gguf: Path,
        tokenizer: Any,
        settings: WorkerSettings | None = None,
        token_timeout: float = 120.0,
        worker: _Worker | None = None,
    ) -> None:
        self.gguf, self.tokenizer = Path(gguf), tokenizer
        self.settings = settings or WorkerSettings()
        self.token_timeout = token_timeout
        self._ids = itertools.count(1)
        self._start_lock = threading.Lock()
        self._worker = worker or start_worker(self.gguf, self.settings)
        info = self._worker.wait_ready()
        self.context_window = int(info["context"])
        self.slots = int(info["slots"])
        log.debug("llama.cpp worker ready: %s", info["system"])
        self.end_ids = list(dict.fromkeys([*end_of_turn_ids(tokenizer), *info["eog"]]))
        #: per finished request: (prompt tokens, of which prefilled) -- for tests and benches
        self.last_prefill: tuple[int, int] = (0, 0)

    @property
    def worker_pid(self) -> int:
        return self._worker.process.pid

    def _live_worker(self) -> _Worker:
        """The worker, started again if it died (a crash fails only the requests then in
        flight)."""
        with self._start_lock:
            if not self._worker.alive:
                log.warning("starting a new llama.cpp worker")
                self._worker.stop()  # its pipes
                self._worker = start_worker(self.gguf, self.settings)
                try:
                    self._worker.wait_ready()
                except ModelError as e:  # the next request tries again
                    raise BackendCrashed(f"the llama.cpp worker could not restart: {e}") from e
            return self._worker

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        for item in self._run(prompt_ids, options, stop, cancel):
            if item[0] == "piece":
                yield item[1]

    def generate(
        self, prompts: list[list[int]], options: GenerationOptions, stop: list[str]
    ) -> list[Generated]:
        """Replies for ``prompts``, decoded together in the worker's slots."""

        def whole(prompt: list[int]) -> Generated:
            pieces, end = [], ("done", "cancelled", 0, 0)
            for item in self._run(prompt, options, stop, threading.Event()):
                if item[0] == "piece":
                    pieces.append(item[1])
                else:
                    end = item
            return Generated("".join(pieces), end[1] == "stop", end[2])

        with ThreadPoolExecutor(max_workers=max(1, min(len(prompts), self.slots))) as pool:
            return list(pool.map(whole, prompts))

    def _run(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[tuple[Any, ...]]:
        """One request's items from the worker: ``("piece", text)``..., then ``("done",
        reason, n_tokens, n_prefilled)``. Raises if the worker refuses it, dies, or sends
        nothing for ``token_timeout`` s. If ``cancel`` is set, or the consumer stops early,
        the worker is told to drop the request (at its next step)."""
        worker = self._live_worker()
        rid = next(self._ids)
        inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        worker.queues[rid] = inbox
        worker.send(_request(rid, prompt_ids, options, stop, self.end_ids))
        finished, last = False, time.monotonic()
        try:
            while not cancel.is_set():
                item = _next(inbox, worker)
                if item is None or item[0] in ("lead", "admitted"):
                    if item is not None and item[0] == "admitted":
                        last = time.monotonic()  # queueing for a slot is not a silence
                    elif time.monotonic() - last >= self.token_timeout:
                        if worker.hung(self.token_timeout):
                            worker.kill(f"sent nothing for {self.token_timeout:g} s")
                        raise BackendTimeout(
                            f"no token for {self.token_timeout:g} s; generation abandoned"
                        )
                    continue
                last = time.monotonic()
                if item[0] == "piece":
                    yield item
                    continue
                finished = True
                if item[0] == "done":
                    self.last_prefill = (len(prompt_ids), item[3])
                    yield item
                    return
                if item[0] == "error":
                    raise BackendError(f"llama.cpp: {item[1]}")
                raise BackendCrashed(f"the llama.cpp worker died ({item[1]}); retry")
        finally:
            worker.queues.pop(rid, None)
            worker.hand_over()
            if not finished:
                worker.send({"op": "cancel", "id": rid})

    def close(self) -> None:
        """Stop the worker process (also done when the interpreter exits)."""
        self._worker.stop()


def _next(inbox: queue.Queue[tuple[Any, ...]], worker: _Worker) -> tuple[Any, ...] | None:
    """The request's next item, if one comes soon: read the pipe for everyone (up to POLL),
    or, while another thread reads it, wait on the inbox it fills (up to FOLLOW)."""
    try:
        return inbox.get_nowait()
    except queue.Empty:
        pass
    if worker.route(POLL):
        try:
            return inbox.get_nowait()
        except queue.Empty:
            return None
    try:
        return inbox.get(timeout=FOLLOW)
    except queue.Empty:
        return None


def _request(
    rid: int, prompt: list[int], options: GenerationOptions, stop: list[str], end_ids: list[int]
) -> dict[str, Any]:
    sampling = options.model_dump(include={"do_sample", "temperature", "top_p", "top_k",
                                           "repetition_penalty", "seed"})  # fmt: skip
    return {"op": "generate", "id": rid, "prompt": prompt, "max_tokens": options.max_new_tokens,
            "sampling": sampling, "stop": stop, "end_ids": end_ids}  # fmt: skip
