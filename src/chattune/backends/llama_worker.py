"""The llama.cpp worker: one GGUF model, several conversations decoded in one batch.

:class:`~chattune.backends.llama_cpp.LlamaCppBackend` runs this module as a child process
(``python -m chattune.backends.llama_worker``), so a crash in native code ends this
process, never the server. It imports llama-cpp-python's low-level API only.

**Slots.** The context holds ``slots`` sequences, each with its own KV cache of
``context`` cells. A slot remembers the tokens in its cache after a reply ends; a new
request goes to the free slot whose cache shares the longest prefix with its prompt, and
only the rest of the prompt is prefilled. A conversation's next turn extends the prompt
of the last one, so it costs its new tokens, not the whole history; several interleaved
conversations each keep their slot while there are as many slots as conversations.

**Continuous batching.** Every step builds one ``llama_batch``: the next token of every
slot that is generating, then prompt chunks of slots that are prefilling, up to
``n_batch`` tokens; one ``llama_decode`` reads the weights once for all of them. A
request joins or leaves between steps.

**Protocol** (one JSON object per line; this module's only output on the ``events`` fd):

=========  ====================================================================
parent →   ``{"op": "generate", "id", "prompt": [ids], "max_tokens", "sampling":
           {...}, "stop": [str], "end_ids": [ids]}``, ``{"op": "cancel", "id"}``
← worker   ``{"op": "ready", "context", "slots", "vocab", "eog": [ids], "system"}``
           once; ``{"op": "fatal", "error"}`` if the model cannot load;
           ``{"op": "step", "pieces": [[id, text]], "done": [[id, reason, n_tokens,
           n_prefilled]], "errors": [[id, message]], "seqs": n, "admitted": [id]}``
           after every decode (``seqs``: how many conversations it batched;
           ``admitted``: requests that got a slot).
=========  ====================================================================
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import llama_cpp as L

#: Enough for any single token's text (llama.cpp's own helpers start at 8 and grow).
PIECE_BYTES = 256


@dataclass
class Request:
    id: int
    prompt: list[int]
    max_tokens: int
    sampling: dict[str, Any]
    stop: list[str]
    end_ids: set[int]
    sampler: Any = None
    pending: list[int] = field(default_factory=list)  # tokens to decode next
    n_generated: int = 0
    n_prefilled: int = 0  # prompt tokens that were not in the slot's cache
    tail: str = ""  # the end of the reply, to find stop strings across pieces
    # bytes to text: holds a character's first bytes back until its last arrive
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


@dataclass
class Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in the cache
    request: Request | None = None
    prompt_len: int = 0  # length of the last request's prompt (its reply follows in cache)
    used: float = 0.0
    logits_at: int = -1  # this step's batch index of the slot's logits, or -1


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists.

    Example:
        >>> common_prefix([1, 2, 3], [1, 2, 4, 5])
        2
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Worker:
    """The scheduler: admits requests into slots, decodes them together, samples, emits."""

    def __init__(self, args: argparse.Namespace, events: BinaryIO) -> None:
        self.events = events
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.use_mmap = True
        self.model = L.llama_model_load_from_file(args.model.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {args.model}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        train_ctx = L.llama_model_n_ctx_train(self.model)
        context = min(args.context or train_ctx, train_ctx)
        cparams = L.llama_context_default_params()
        cparams.n_seq_max = args.slots
        cparams.n_ctx = context * args.slots  # each sequence gets `context` cells
        cparams.n_batch = args.batch
        cparams.n_ubatch = args.batch
        cparams.n_threads = cparams.n_threads_batch = args.threads
        cparams.kv_unified = False
        cparams.flash_attn_type = (
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED if args.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.memory = L.llama_get_memory(self.ctx)
        self.context = L.llama_n_ctx_seq(self.ctx)
        self.n_batch = args.batch
        self.batch = L.llama_batch_init(args.batch, 0, 1)
        self.slots = [Slot(seq) for seq in range(args.slots)]
        self.waiting: deque[Request] = deque()
        # What the current step reports: [id, text] pieces, [id, reason, n_tokens,
        # n_prefilled] endings, [id, message] errors.
        self.pieces: list[list[Any]] = []
        self.done: list[list[Any]] = []
        self.errors: list[list[Any]] = []
        self.seqs = 0  # sequences in the last batch
        self.admitted: list[int] = []  # requests that got a slot this step
        self.piece = ctypes.create_string_buffer(PIECE_BYTES)
        self.eog = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]

    # ----- protocol ---------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self.events.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.events.flush()

    def warm_up(self) -> None:
        """Decode one token and forget it: the first decode allocates and repacks weights
        (a few hundred ms), better spent while the parent loads its tokenizer."""
        batch = self.batch
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = 0, 0, 1
        batch.seq_id[0][0], batch.logits[0] = 0, True
        L.llama_decode(self.ctx, batch)
        L.llama_memory_seq_rm(self.memory, 0, -1, -1)

    def ready(self) -> None:
        info = L.llama_print_system_info().decode(errors="replace").strip()
        self.send({"op": "ready", "context": self.context, "slots": len(self.slots),
                   "vocab": self.n_vocab, "eog": self.eog, "system": info})  # fmt: skip

    def report(self) -> None:
        """Send what this step produced (if anything) and start the next report."""
        if self.pieces or self.done or self.errors:
            self.send({"op": "step", "pieces": self.pieces, "done": self.done,
                       "errors": self.errors, "seqs": self.seqs,
                       "admitted": self.admitted})  # fmt: skip
        self.pieces, self.done, self.errors, self.admitted = [], [], [], []

    def handle(self, message: dict[str, Any]) -> None:
        """Queue a request, or cancel one; a request it cannot run is reported an error."""
        if message["op"] == "cancel":
            return self.cancel(int(message["id"]))
        request = Request(
            int(message["id"]),
            [int(t) for t in message["prompt"]],
            int(message["max_tokens"]),
            message.get("sampling") or {},
            list(message.get("stop") or []),
            set(message.get("end_ids") or []),
        )
        if not request.prompt:
            self.errors.append([request.id, "empty prompt"])
        elif len(request.prompt) >= self.context:
            self.errors.append([request.id, f"a prompt of {len(request.prompt)} tokens does "
                                f"not fit the {self.context}-token context"])  # fmt: skip
        elif any(not 0 <= t < self.n_vocab for t in request.prompt):
            self.errors.append([request.id, f"token ids outside 0..{self.n_vocab - 1}"])
        else:
            self.waiting.append(request)
        return None

    def cancel(self, rid: int) -> None:
        self.waiting = deque(r for r in self.waiting if r.id != rid)
        for slot in self.slots:
            if slot.request is not None and slot.request.id == rid:
                self.finish(slot, "cancelled")

    # ----- scheduling -------------------------------------------------------------------

    def active(self) -> bool:
        return bool(self.waiting) or any(s.request for s in self.slots)

    def admit(self) -> None:
        """Move waiting requests into free slots, each to the longest cached prefix."""
        while self.waiting:
            free = [s for s in self.slots if s.request is None]
            if not free:
                return
            request = self.waiting.popleft()
            slot = self.choose(free, request.prompt)
            keep = common_prefix(slot.cached, request.prompt)
            keep = min(keep, len(request.prompt) - 1)  # the last prompt token gives logits
            if keep < len(slot.cached) and not L.llama_memory_seq_rm(
                self.memory, slot.seq, keep, -1
            ):
                L.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)  # cannot cut: clear it
                keep = 0
            slot.cached = slot.cached[:keep]
            request.pending = request.prompt[keep:]
            request.n_prefilled = len(request.pending)
            try:
                request.sampler = self.make_sampler(request)
            except Exception as e:  # a setting llama.cpp refuses fails this request only
                self.errors.append([request.id, f"sampler: {e}"])
                continue
            self.admitted.append(request.id)
            slot.request, slot.used, slot.prompt_len = (
                request,
                time.monotonic(),
                len(request.prompt),
            )

    @staticmethod
    def choose(free: list[Slot], prompt: list[int]) -> Slot:
        """The slot for a new prompt: the one whose last prompt it extends (its own
        conversation, the longest such); else a never-used slot; else the least recently
        used. Whatever prefix the chosen slot shares (a system prompt) is reused anyway;
        ranking by shared prefix alone would let a new conversation evict another
        conversation's cache for the sake of their common system prompt."""
        own = [s for s in free if s.prompt_len and common_prefix(s.cached, prompt) >= s.prompt_len]
        if own:
            return max(own, key=lambda s: s.prompt_len)
        return min(free, key=lambda s: (bool(s.cached), s.used))

    def make_sampler(self, request: Request) -> Any:
        """The request's sampler chain, in transformers' order: repetition penalty, then
        temperature, top-k, top-p, and a seeded draw; or greedy."""
        s = request.sampling
        params = L.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = L.llama_sampler_chain_init(params)
        penalty = float(s.get("repetition_penalty", 1.0))
        if penalty != 1.0:
            # over the whole context, prompt included, as transformers does (llama.cpp
            # clamps a last_n of -1 to 0: off)
            penalties = L.llama_sampler_init_penalties(self.n_vocab, self.context, penalty, 0, 0)
            L.llama_sampler_chain_add(chain, penalties)
            for token in request.prompt:
                L.llama_sampler_accept(chain, token)
        if not s.get("do_sample"):
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(float(s["temperature"])))
        if int(s.get("top_k", 0)) > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(int(s["top_k"])))
        if float(s.get("top_p", 1.0)) < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(float(s["top_p"]), 1))
        # llama.cpp seeds are 32-bit, and 0xFFFFFFFF means "draw a random seed"
        seed = int(s.get("seed", 0)) % 0xFFFFFFFF
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        return chain

    def fill_batch(self) -> list[Slot]:
        """This step's batch: one token per generating slot, then prompt chunks."""
        batch, n, self.seqs = self.batch, 0, 0
        busy = [s for s in self.slots if s.request is not None]
        for slot in busy:
            slot.logits_at = -1
        for slot in sorted(busy, key=lambda s: len(s.request.pending)):  # decoders first
            request = slot.request
            take = request.pending[: self.n_batch - n]
            if not take:
                continue
            if len(slot.cached) + len(take) > self.context:
                self.finish(slot, "length")
                continue
            for i, token in enumerate(take):
                batch.token[n] = token
                batch.pos[n] = len(slot.cached) + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq
                batch.logits[n] = False
                n += 1
            slot.cached += take
            self.seqs += 1
            del request.pending[: len(take)]
            if not request.pending:  # the prompt's (or reply's) last token: sample after it
                batch.logits[n - 1] = True
                slot.logits_at = n - 1
            if n == self.n_batch:
                break
        batch.n_tokens = n
        return [s for s in self.slots if s.request is not None and s.logits_at >= 0]

    def step(self) -> None:
        """Admit, decode one batch, sample every slot that has logits, report."""
        self.admit()
        sampling = self.fill_batch()
        if self.batch.n_tokens:
            code = L.llama_decode(self.ctx, self.batch)
            if code != 0:  # 1: no room in the KV cache; < 0: an error
                self.fail_batch(f"llama_decode returned {code}")
                return self.report()
        for slot in sampling:
            self.sample(slot)
        self.report()

    def fail_batch(self, message: str) -> None:
        """End every request that was in the failed batch; forget their caches."""
        seqs = {self.batch.seq_id[i][0] for i in range(self.batch.n_tokens)}
        for slot in self.slots:
            if slot.seq in seqs and slot.request is not None:
                self.errors.append([slot.request.id, message])
                self.finish(slot, "error")
                L.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
                slot.cached, slot.prompt_len = [], 0

    def sample(self, slot: Slot) -> None:
        request = slot.request
        assert request is not None
        token = L.llama_sampler_sample(request.sampler, self.ctx, slot.logits_at)
        if token in request.end_ids or L.llama_vocab_is_eog(self.vocab, token):
            return self.finish(slot, "stop")
        request.n_generated += 1
        text = request.decoder.decode(self.token_bytes(token))
        if text:
            self.pieces.append([request.id, text])
            if request.stop:
                request.tail = (request.tail + text)[-(max(map(len, request.stop)) + len(text)) :]
                if any(s in request.tail for s in request.stop):
                    return self.finish(slot, "stop")
        if request.n_generated >= request.max_tokens:
            return self.finish(slot, "length")
        request.pending = [token]

    def token_bytes(self, token: int) -> bytes:
        n = L.llama_token_to_piece(self.vocab, token, self.piece, PIECE_BYTES, 0, False)
        if n < 0:  # longer than the buffer: ask again with the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            return buf.raw[:n]
        return self.piece.raw[:n]

    def finish(self, slot: Slot, reason: str) -> None:
        """End the slot's request; its cache stays for the next request to reuse."""
        request = slot.request
        assert request is not None
        # What the decoder still holds is the start of a character the reply never finished
        # (max_tokens came first): flushing it would only send U+FFFD, so it is dropped, as
        # in transformers (``chattune.model.generation.drop_cut_character``).
        L.llama_sampler_free(request.sampler)
        slot.request, slot.used = None, time.monotonic()
        if reason not in ("cancelled", "error"):
            self.done.append([request.id, reason, request.n_generated, request.n_prefilled])


def read_commands(source: BinaryIO, inbox: queue.Queue[dict[str, Any] | None]) -> None:
    """Parent's commands, one JSON object a line, into ``inbox``; None when the parent
    closes the pipe (then the worker exits)."""
    for line in source:
        try:
            inbox.put(json.loads(line))
        except ValueError:  # not our parent's protocol: stop (the parent starts a new one)
            sys.stderr.write(f"llama worker: unreadable command {line[:80]!r}\n")
            break
    inbox.put(None)


def serve(worker: Worker, inbox: queue.Queue[dict[str, Any] | None]) -> None:
    """The loop: wait for work when idle, else take what arrived and run one step."""
    while True:
        messages = [inbox.get()] if not worker.active() else []
        while True:
            try:
                messages.append(inbox.get_nowait())
            except queue.Empty:
                break
        for message in messages:
            if message is None:
                return
            try:
                worker.handle(message)
            except (KeyError, TypeError, ValueError) as e:  # a malformed request: refuse it
                worker.errors.append([message.get("id"), f"bad request: {e!r}"])
        if worker.active():
            worker.step()
        else:
            worker.report()  # refusals, when nothing else runs


def _quiet_llama_logs() -> Any:
    """Drop llama.cpp's informational log lines; keep warnings and errors on stderr."""
    shown = {3, 4}  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 "continue the last"
    last = [0]

    @L.llama_log_callback
    def log(level: int, text: bytes, _: Any) -> None:
        last[0] = last[0] if level == 5 else level
        if last[0] in shown:
            sys.stderr.write(text.decode(errors="replace"))

    L.llama_log_set(log, ctypes.c_void_p(0))
    return log  # the caller keeps the callback alive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chattune.backends.llama_worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--commands-fd", type=int, required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--context", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--flash-attn", type=int, default=1)
    args = parser.parse_args(argv)
    keep = _quiet_llama_logs()
    events = os.fdopen(args.events_fd, "wb")
    commands = os.fdopen(args.commands_fd, "rb")
    try:
        worker = Worker(args, events)
    except Exception as e:  # the parent shows this instead of a bare exit code
        events.write(json.dumps({"op": "fatal", "error": str(e)}).encode() + b"\n")
        events.flush()
        return 1
    worker.warm_up()
    worker.ready()
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=read_commands, args=(commands, inbox), daemon=True).start()
    serve(worker, inbox)
    del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
