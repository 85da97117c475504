"""chattune's generation speed against raw llama-cpp-python, side by side in one run.

Every contender decodes the same GGUF file (default: the embedded SmolLM2-135M-Instruct
exported once to ``runs/bench/``) from the same prompt ids: first user turns of
``examples/support/val.jsonl`` rendered through ``examples/support/bot.yaml`` by
``ChatEngine.build_prompt``. Decoding is greedy; every llama.cpp runs on every core.

1. **One stream**, decode tokens/s (tokens after the first / time after the first; prefill
   excluded): raw ``llama_cpp.Llama.generate``, a raw low-level loop, chattune's llama.cpp
   and transformers backends (both through ``ChatEngine.stream``). Replies end at the
   end-of-turn token, so the prompts with the longest raw replies are used and the tokens
   actually produced are counted. Goal: chattune llama.cpp / best raw >= 0.95.
2. **Concurrent streams** through ``build_app`` under uvicorn on 127.0.0.1 (a client thread
   per stream, started by a barrier, after a warm-up round that leaves only the system
   prompt in the slots' caches) vs a raw low-level batched loop of the same prompts
   (worker-shaped: ``n_seq_max`` = streams, non-unified KV, a greedy sampler per sequence).
   Aggregate tokens/s = tokens (each reply's text re-tokenized, on both sides) / wall time,
   prefill included; also printed from the first token on. Goals: ratio >= 1.0, p95 TTFT
   < 1 s.
3. **Multi-turn TTFT**: a ``--turns`` conversation on a 1-slot backend (replies <= 64
   tokens); the last turn's TTFT with the earlier turns' KV in the slot (in the
   conversation, then with the slot refilled with exactly those tokens) vs the same prompt
   after an unrelated prompt evicted it. Goal: cached / recomputed <= 0.3.
4. **Cold start** of ``chattune chat --model FILE.gguf``: spawn to first byte on stdout,
   twice (the first run converts and caches the GGUF's tokenizer if not yet cached). Goal:
   the second < 5 s.

    .venv/bin/python bench/serve_speed.py [--quick] [--gguf FILE] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is local
ROOT = Path(__file__).resolve().parent.parent
VAL = ROOT / "examples" / "support" / "val.jsonl"
PROFILE = ROOT / "examples" / "support" / "bot.yaml"
CORES = os.cpu_count() or 1
CPU_FLAGS = "avx2 fma f16c avx_vnni avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def verdict(value: float, goal: float, higher: bool = True) -> str:
    ok = value >= goal if higher else value < goal
    return f"{value:.2f} (goal {'>=' if higher else '<'} {goal:g}) {'PASS' if ok else 'FAIL'}"


# ----- setup ------------------------------------------------------------------------------


def print_system() -> dict[str, Any]:
    import llama_cpp
    import torch

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = set(info.get("flags", "").split())
    system = {"cpu": info.get("model name", "unknown"), "cores": CORES,
              "flags": {f: f in flags for f in CPU_FLAGS.split()},
              "llama_cpp": llama_cpp.__version__,
              "llama_system_info": llama_cpp.llama_print_system_info().decode().strip(),
              "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
              "load_average": os.getloadavg()[0]}  # fmt: skip
    print(f"cpu: {system['cpu']}, {CORES} cores, load average {system['load_average']:.2f}")
    print("flags: " + " ".join(f"{f}{'+' if on else '-'}" for f, on in system["flags"].items()))
    print(f"llama-cpp-python {system['llama_cpp']}: {system['llama_system_info']}")
    print(f"torch {system['torch']}", flush=True)
    return system


def quiet_llama() -> Any:
    """Drop llama.cpp's log lines in this process, but errors; keep the result alive."""
    import llama_cpp as L

    @L.llama_log_callback
    def log(level: int, text: bytes, _: Any) -> None:
        if level == 4:
            sys.stderr.write(text.decode(errors="replace"))

    L.llama_log_set(log, ctypes.c_void_p(0))
    return log


def ensure_gguf(args: argparse.Namespace) -> Path:
    if args.gguf:
        return Path(args.gguf)
    path = ROOT / "runs" / "bench" / f"smollm2-135m-instruct-{args.quant}.gguf"
    if not path.exists():
        from chattune.model.export import export_model

        print(f"exporting the embedded model to {path} (once) ...", flush=True)
        export_model("smollm2-135m-instruct", "gguf", path, quant=args.quant)
    return path


def user_turns() -> tuple[list[str], list[str]]:
    """(each validation conversation's first user turn, no repeats; all user turns)."""
    rows = [json.loads(line)["messages"] for line in VAL.read_text().splitlines() if line]
    users = [[m["content"] for m in row if m["role"] == "user"] for row in rows]
    return list(dict.fromkeys(u[0] for u in users)), [t for u in users for t in u]


def retokenized(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def decode_rate(times: list[float]) -> float:
    """Tokens after the first over the time after the first."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


# ----- raw llama.cpp ----------------------------------------------------------------------


class RawBatched:
    """llama-cpp-python's low-level API in the worker's shape: ``n_seq`` sequences of
    ``context`` cells (non-unified KV), 512-token batches, a greedy sampler per sequence;
    no HTTP, no pipes, no scheduler."""

    def __init__(self, gguf: Path, n_seq: int, context: int) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        params = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), params)
        self.vocab = L.llama_model_get_vocab(self.model)
        p = L.llama_context_default_params()
        p.n_seq_max, p.n_ctx, p.n_batch, p.n_ubatch = n_seq, n_seq * context, 512, 512
        p.n_threads = p.n_threads_batch = CORES
        p.kv_unified, p.no_perf, p.flash_attn_type = False, True, L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = L.llama_init_from_model(self.model, p)
        self.batch = L.llama_batch_init(512, 0, 1)
        self.piece = ctypes.create_string_buffer(256)

    def text(self, tokens: list[int]) -> str:
        out = []
        for t in tokens:
            n = self.L.llama_token_to_piece(self.vocab, t, self.piece, 256, 0, False)
            out.append(self.piece.raw[:n])
        return b"".join(out).decode(errors="replace")

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Decode (token, position, sequence, logits?) items, 512 a batch; returns each
        sequence's logits index in the last batch."""
        at: dict[int, int] = {}
        for start in range(0, len(items), 512):
            chunk, b, at = items[start : start + 512], self.batch, {}
            for i, (token, pos, seq, logits) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = token, pos, 1, seq
                b.logits[i] = logits
                at.update({seq: i} if logits else {})
            b.n_tokens = len(chunk)
            assert self.L.llama_decode(self.ctx, b) == 0, "llama_decode failed"
        return at

    def run(self, prompts: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
        """Prefill every prompt in one batch (if they fit; else all but their last tokens
        first), then decode each live sequence every step until an end-of-generation token
        or ``max_tokens``: per sequence its tokens, the time each was sampled, the start."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        samplers = [L.llama_sampler_init_greedy() for _ in prompts]
        out = [{"tokens": [], "times": [], "start": time.perf_counter()} for _ in prompts]
        items = [(t, i, s, i == len(p) - 1) for s, p in enumerate(prompts) for i, t in enumerate(p)]
        if len(items) > 512:
            self._decode([i for i in items if not i[3]])
            items = [i for i in items if i[3]]
        at, pos = self._decode(items), [len(p) for p in prompts]
        while at:
            step = []
            for seq, index in at.items():
                token = L.llama_sampler_sample(samplers[seq], self.ctx, index)
                if L.llama_vocab_is_eog(self.vocab, token):
                    continue
                out[seq]["tokens"].append(token)
                out[seq]["times"].append(time.perf_counter())
                if len(out[seq]["tokens"]) < max_tokens:
                    step.append((token, pos[seq], seq, True))
                    pos[seq] += 1
            at = self._decode(step) if step else {}
        for s in samplers:
            L.llama_sampler_free(s)
        return out


def highlevel_times(llm: Any, ids: list[int], tokens: int) -> list[float]:
    """``llama_cpp.Llama.generate`` (greedy) to an end-of-generation token: each token's
    sampling time."""
    import llama_cpp as L

    llm.reset()
    times: list[float] = []
    for token in llm.generate(ids, top_k=1, temp=0, repeat_penalty=1.0):
        if L.llama_vocab_is_eog(llm._model.vocab, token) or len(times) == tokens:
            break
        times.append(time.perf_counter())
    return times


# ----- chattune ---------------------------------------------------------------------------


def engine_stream(engine: Any, ids: list[int], options: Any) -> tuple[int, float, str]:
    """One reply through ``ChatEngine.stream``: (tokens, decode tokens/s, text). Tokens
    re-tokenized from the text (the transformers streamer yields words, not tokens)."""
    pieces, times = [], []
    for piece in engine.stream([], options, prompt_ids=ids):
        pieces.append(piece)
        times.append(time.perf_counter())
    text, tok = "".join(pieces), engine.tokenizer
    after = retokenized(tok, text) - retokenized(tok, pieces[0] if pieces else "")
    rate = after / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return retokenized(tok, text), rate, text


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1 in a thread (tests/conftest.py's helper)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client(base: str, question: str, tokens: int, barrier: threading.Barrier) -> dict:
    """One streamed chat completion: its text, TTFT, start and end times, final usage."""
    import httpx

    body = {"messages": [{"role": "user", "content": question}], "stream": True,
            "max_tokens": tokens, "temperature": 0}  # fmt: skip
    got: dict[str, Any] = {"text": "", "ttft": None, "usage": {}}
    with httpx.Client(base_url=base, timeout=300) as http:
        barrier.wait()
        got["start"] = time.perf_counter()
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line == "data: [DONE]" or not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                content = event["choices"][0]["delta"].get("content") or ""
                if content and got["ttft"] is None:
                    got["ttft"] = time.perf_counter() - got["start"]
                got["text"] += content
                got["usage"] = event.get("usage") or got["usage"]
    got["end"] = time.perf_counter()
    return got


def serve_rounds(engine: Any, rounds: list[tuple[list[str], int]]) -> list[list[dict]]:
    """Each round's (questions, max_tokens), all sent at once, to one live server."""
    from chattune.serve.app import build_app
    from chattune.serve.store import Store

    out = []
    with tempfile.TemporaryDirectory(prefix="serve-speed-") as tmp:
        store = Store(f"sqlite:///{tmp}/chat.db")
        app = build_app(engine, store, "bench", max_concurrency=len(rounds[0][0]))
        with live_server(app) as base:
            for questions, tokens in rounds:
                barrier, results = threading.Barrier(len(questions)), [{} for _ in questions]

                def run(i: int, qs: list[str] = questions, n: int = tokens) -> None:
                    results[i] = client(base, qs[i], n, barrier)  # noqa: B023

                threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                out.append(results)
        store.close()
    return out


# ----- the four measurements ----------------------------------------------------------------


def bench_one_stream(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Raw low-level, raw ``Llama`` and chattune llama.cpp interleaved prompt by prompt (so
    drifting load on the machine hits them alike); then chattune transformers."""
    import llama_cpp

    from chattune.backends.registry import BackendSettings, open_backend
    from chattune.chat.engine import ChatEngine

    raw, ids, engine = ctx["raw"], ctx["ids"], ctx["engine"]
    lengths = {q: len(raw.run([p], args.tokens)[0]["tokens"]) for q, p in ids.items()}
    chosen = sorted(ids, key=lambda q: -lengths[q])[: args.prompts]  # (and a warm-up)
    prompts = [ids[q] for q in chosen] * args.repeats
    options = engine.options(max_new_tokens=args.tokens, do_sample=False)
    llm = llama_cpp.Llama(str(ctx["gguf"]), n_ctx=2048, n_threads=CORES, flash_attn=True,
                          verbose=False)  # fmt: skip
    rows: dict[str, list[tuple[int, float]]] = {"raw Llama.generate": [], "raw low-level": [],
                                                "chattune llama.cpp": []}  # fmt: skip
    same = 0
    for i, p in enumerate([prompts[0], *prompts]):  # the first: a warm-up
        low, high = raw.run([p], args.tokens)[0], highlevel_times(llm, p, args.tokens)
        n, rate, text = engine_stream(engine, p, options)
        if i:
            rows["raw Llama.generate"].append((len(high), decode_rate(high)))
            rows["raw low-level"].append((len(low["tokens"]), decode_rate(low["times"])))
            rows["chattune llama.cpp"].append((n, rate))
            same += text == raw.text(low["tokens"])
    del llm
    tf = ChatEngine(open_backend(args.hf, BackendSettings(name="transformers")), ctx["profile"])
    rows["chattune transformers"] = [
        engine_stream(tf, p, options)[:2] for p in [prompts[0], *prompts]
    ][1:]
    table = {k: (statistics.mean(n for n, _ in v), median([r for _, r in v]))
             for k, v in rows.items()}  # fmt: skip
    best = max(table["raw Llama.generate"][1], table["raw low-level"][1])
    print(f"\n1. one stream, decode tokens/s (greedy, <= {args.tokens} new tokens; median of "
          f"{args.prompts} prompts x {args.repeats}: those with the longest raw replies, "
          f"{[lengths[q] for q in chosen]} tokens)")  # fmt: skip
    print(f"   {'contender':<24}{'tokens':>8}{'decode tok/s':>14}{'/ best raw':>12}")
    for name, (n, rate) in table.items():
        print(f"   {name:<24}{n:>8.0f}{rate:>14.1f}{rate / best:>11.2f}x")
    print("   (tokens: raw sampled; chattune re-tokenized from the streamed text; chattune "
          f"llama.cpp replies identical to raw low-level: {same}/{len(prompts)})")  # fmt: skip
    ratio = table["chattune llama.cpp"][1] / best
    tf_ratio = table["chattune transformers"][1] / best
    print(f"   RATIO chattune llama.cpp / raw = {verdict(ratio, 0.95)}")
    print(f"   ratio chattune transformers / raw = {tf_ratio:.2f}")
    return {"prompts": chosen, "table": table, "ratio": ratio, "transformers_ratio": tf_ratio}


def bench_streams(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    raw, ids, engine, tok = ctx["raw"], ctx["ids"], ctx["engine"], ctx["engine"].tokenizer
    timed = [list(ids)[i % len(ids)] for i in range(args.streams)]
    warm = [f"(warm-up) {q}" for q in timed]  # in every slot, sharing the system prompt only
    prompts = [ids[q] for q in timed]
    raw.run(prompts, 4)  # warm-up
    runs = []
    for _ in range(args.repeats):
        out = raw.run(prompts, args.tokens)
        wall = max(o["times"][-1] for o in out if o["times"]) - out[0]["start"]
        tokens = sum(retokenized(tok, raw.text(o["tokens"])) for o in out)
        exact = sum(len(o["tokens"]) for o in out)
        runs.append((tokens / wall, tokens, exact, wall, out[0]["times"][0] - out[0]["start"]))
    raw_rate, raw_tokens, raw_exact, raw_wall, raw_ttft = sorted(runs)[len(runs) // 2]
    served = serve_rounds(engine, [(warm, 16), (timed, args.tokens)])[-1]
    end, begin = max(r["end"] for r in served), min(r["start"] for r in served)
    first = min(r["start"] + r["ttft"] for r in served if r["ttft"] is not None)
    wall = end - begin
    tokens = sum(retokenized(tok, r["text"]) for r in served)
    usage = sum(r["usage"].get("completion_tokens", 0) for r in served)
    ttfts = [r["ttft"] for r in served if r["ttft"] is not None]
    p50, p95, rate = percentile(ttfts, 0.5), percentile(ttfts, 0.95), tokens / wall
    shared = next(i for i, t in enumerate(zip(*prompts, strict=False)) if len(set(t)) > 1)
    print(f"\n2. {args.streams} concurrent streams, <= {args.tokens} tokens each: aggregate "
          "tokens/s (text re-tokenized on both sides) / wall time, prefill included")  # fmt: skip
    print(f"   {'contender':<24}{'tokens':>8}{'wall s':>9}{'tok/s':>9}{'TTFT p50':>10}{'p95':>8}")
    print(f"   {'raw batched low-level':<24}{raw_tokens:>8}{raw_wall:>9.2f}{raw_rate:>9.1f}"
          f"{raw_ttft:>10.3f}{raw_ttft:>8.3f}")  # fmt: skip
    print(f"   {'chattune serve':<24}{tokens:>8}{wall:>9.2f}{rate:>9.1f}{p50:>10.3f}{p95:>8.3f}")
    print(f"   (raw: median of {args.repeats}, {raw_exact} tokens sampled; serve: one run, "
          f"usage.completion_tokens {usage}, at most {engine.backend._worker.max_batch} "
          f"conversations per decode; prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, whose first {shared} (the system prompt) the "
          "server had cached in its warm-up round)")  # fmt: skip
    decode_raw, decode_serve = raw_tokens / (raw_wall - raw_ttft), tokens / (end - first)
    print(f"   (from the first token on, prefill excluded: raw {decode_raw:.1f}, serve "
          f"{decode_serve:.1f} tokens/s, ratio {decode_serve / decode_raw:.2f})")  # fmt: skip
    print(f"   RATIO serve / raw batched = {verdict(rate / raw_rate, 1.0)}")
    print(f"   p95 TTFT (s) = {verdict(p95, 1.0, higher=False)}")
    return {"raw_tokens_per_s": raw_rate, "serve_tokens_per_s": rate, "ratio": rate / raw_rate,
            "ttft_p50": p50, "ttft_p95": p95, "raw_ttft": raw_ttft, "usage": usage}  # fmt: skip


def probe_ttft(engine: Any, history: list, options: Any, **kwargs: Any) -> dict[str, Any]:
    """Seconds from ``ChatEngine.stream`` (prompt building included) to its first piece,
    the backend's (prompt tokens, prefilled tokens), the reply."""
    start, ttft, text = time.perf_counter(), None, ""
    for piece in engine.stream(history, options, **kwargs):
        ttft = ttft if ttft is not None else time.perf_counter() - start
        text += piece
    return {"ttft": ttft, "prefill": engine.backend.last_prefill, "text": text.strip()}


def bench_multi_turn(ctx: dict[str, Any], turns: list[str], args: argparse.Namespace) -> dict:
    """The conversation on a 1-slot backend; then ``repeats`` times: evict the slot (an
    unrelated prompt), time the last turn recomputed, put the tokens the earlier turns had
    left back in the slot (that prompt prefix, 1 token), time the last turn cached."""
    from chattune.backends.registry import BackendSettings, open_backend
    from chattune.chat.engine import ChatEngine
    from chattune.data.types import Message

    settings = BackendSettings(name="llama.cpp", slots=1, context=2048)
    engine = ChatEngine(open_backend(str(ctx["gguf"]), settings), ctx["profile"])
    reply, probe = engine.options(max_new_tokens=64), engine.options(max_new_tokens=1)
    history, per_turn = [], []
    for question in turns:
        history.append(Message("user", question))
        per_turn.append(probe_ttft(engine, history, reply))
        history.append(Message("assistant", per_turn[-1]["text"]))
    start = time.perf_counter()
    last = engine.build_prompt(history[:-1], probe)[0]
    build_s = time.perf_counter() - start
    kept = last[: len(last) - per_turn[-1]["prefill"][1]]  # what turns 1..n-1 left in the slot
    cold, cached = [], []
    for _ in range(args.repeats):
        probe_ttft(engine, [Message("user", "A haiku about the sea?")], probe, system="A poet.")
        cold.append(probe_ttft(engine, history[:-1], probe))
        probe_ttft(engine, [], probe, prompt_ids=kept)
        cached.append(probe_ttft(engine, history[:-1], probe))
    engine.backend.close()
    hot, recomputed = median([c["ttft"] for c in cached]), median([c["ttft"] for c in cold])
    print(f"\n3. multi-turn TTFT at turn {len(turns)} ({len(last)} prompt tokens; 1 slot; "
          f"recomputed = after an unrelated prompt evicted the slot; median of {args.repeats}; "
          f"TTFT includes build_prompt, {build_s * 1000:.0f} ms here)")  # fmt: skip
    print("   TTFT per turn (s): " + " ".join(f"{t['ttft']:.3f}" for t in per_turn))
    print("   prefilled per turn: " + " ".join(f"{t['prefill'][1]}" for t in per_turn))
    natural = per_turn[-1]
    print(f"   cached:     {hot:.3f} s, last_prefill {cached[-1]['prefill']} (in the "
          f"conversation itself {natural['ttft']:.3f} s, {natural['prefill']})")  # fmt: skip
    print(f"   recomputed: {recomputed:.3f} s, last_prefill {cold[-1]['prefill']}")
    print(f"   RATIO cached / recomputed = {verdict(hot / recomputed, 0.3, higher=False)}")
    return {"cached_ttft": hot, "recomputed_ttft": recomputed, "ratio": hot / recomputed,
            "prompt_tokens": len(last), "build_prompt_s": build_s}  # fmt: skip


def cold_start(gguf: Path, runs: int = 2) -> dict[str, Any]:
    """``chattune chat --model GGUF --max-new-tokens 8``, one line piped in: seconds from
    spawn to the first byte on stdout, per run."""
    from chattune.model.loading import _gguf_cache_folder

    folder = _gguf_cache_folder(gguf)
    cached = any(p.exists() for p in (folder, folder.with_name(folder.name + "-tokenizer")))
    cmd = [str(Path(sys.executable).parent / "chattune"), "chat", "--model", str(gguf),
           "--max-new-tokens", "8"]  # fmt: skip
    seconds = []
    for _ in range(runs):
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            proc.stdin.write(b"Hi there!\n")  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
            first = proc.stdout.read(1)  # type: ignore[union-attr]
            seconds.append(time.perf_counter() - start)
            proc.stdout.read()  # type: ignore[union-attr]
            proc.wait()
            if proc.returncode or not first:
                err.seek(0)
                raise SystemExit(f"chattune chat failed:\n{err.read().decode()[-2000:]}")
    return {"seconds": seconds, "tokenizer_cached_before": cached}


def print_cold_start(cold: dict[str, Any]) -> None:
    first, second = cold["seconds"]
    print("\n4. cold start: chattune chat --model GGUF --max-new-tokens 8, spawn to first byte "
          f"on stdout: first run {first:.2f} s (tokenizer already cached: "
          f"{cold['tokenizer_cached_before']}), second run {second:.2f} s")  # fmt: skip
    print(f"   second run (s) = {verdict(second, 5.0, higher=False)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", help="the model file (default: export the embedded model)")
    parser.add_argument("--hf", default="smollm2-135m-instruct", help="its model, transformers")
    parser.add_argument("--quant", default="q8_0", help="quantization of the default export")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per reply")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams (and slots)")
    parser.add_argument("--turns", type=int, default=10, help="turns of the conversation")
    parser.add_argument("--prompts", type=int, default=3, help="one-stream prompts")
    parser.add_argument("--repeats", type=int, default=3, help="timings to take the median of")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke test")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.streams, args.turns, args.prompts, args.repeats = 32, 4, 4, 1, 1
    from chattune.backends.registry import BackendSettings, open_backend
    from chattune.chat.engine import ChatEngine
    from chattune.chat.profile import load_profile
    from chattune.data.types import Message

    results: dict[str, Any] = {"system": print_system(), "args": vars(args)}
    keep = quiet_llama()
    gguf = ensure_gguf(args)
    print(f"model: {gguf}", flush=True)
    results["cold_start"] = cold_start(gguf)  # first, while nothing else is loaded
    settings = BackendSettings(name="llama.cpp", slots=args.streams, context=2048)
    engine = ChatEngine(open_backend(str(gguf), settings), load_profile(PROFILE))
    firsts, turns = user_turns()
    options = engine.options(max_new_tokens=args.tokens)
    ids = {q: engine.build_prompt([Message("user", q)], options)[0] for q in firsts}
    ctx = {"gguf": gguf, "engine": engine, "profile": engine.profile, "ids": ids,
           "raw": RawBatched(gguf, args.streams, 2048)}  # fmt: skip
    results["one_stream"] = bench_one_stream(ctx, args)
    results["streams"] = bench_streams(ctx, args)
    engine.backend.close()
    results["multi_turn"] = bench_multi_turn(ctx, turns[: args.turns], args)
    print_cold_start(results["cold_start"])
    del keep
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
