"""``chattune serve`` under load: a reliability run (the default) or a speed comparison.

Both modes start ``chattune serve`` with the embedded model on 127.0.0.1 (an API key, a
throw-away SQLite database) and drive it from ``--clients`` threads that share
``--requests`` requests in all. Sending stops after ``--seconds``; every request has a
client-side timeout, and a 429 is retried at most ``--max-tries`` times in all.

**Reliability** (issue 13, "Load"). A small queue (``--max-queue``) so 429s happen. Each 10
consecutive requests go to one conversation (their appends race); of each 20, 1 is
oversize (cycling: a body over the 1 MiB limit -> 413; 5 stop strings, a 5,000-character
stop string, ``seed`` 2**70 -> 400), 2 are streams the client leaves after the first
content chunk, and the rest alternate streamed (SSE) and plain, ``max_tokens`` 8 to 16. On
429 the client waits the ``Retry-After`` seconds, then retries (a request still refused on
its last try ends as 429, "gave up"). Then it reads every conversation back: each
acknowledged reply (plain: the JSON with ``message_id``; stream: the final chunk with
``message_id``, then ``[DONE]``) must be stored, with its question just before it. It
prints the status histogram, 5xx and 429 counts, p50/p95 time to first token (streamed
200s) and latency (both timed on the attempt that was answered; 429 waits are reported
apart), the CPU, and a verdict; it exits 1 on any 5xx or ``server_error`` event, a missing
acknowledged message, an oversize request not refused as expected, or a transport or
protocol error (its exception's name in the histogram). On a 2-core CPU shared with other
work, 1000 requests took 11 minutes (``--max-concurrency 2``)::

    python bench/serve_load.py --requests 1000 --clients 16
    python bench/serve_load.py --requests 200 --clients 8 --max-queue 4   # a quick one

**Compare** (``--compare``): streaming clients only, then the same replies from a plain
``model.generate`` loop in one process; prints TTFT, tokens/s and the ratio::

    python bench/serve_load.py --compare [--clients 4] [--requests 8] [--max-tokens 48]

``tests/test_serve_load.py`` runs the reliability driver (:func:`drive`,
:func:`check_stored`, :func:`summarize`) against an in-process server with a fake backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

API_KEY = "sk-bench"
QUESTIONS = [
    "How long do I have to return an item?",
    "Is shipping free?",
    "Do you ship to Canada?",
    "How do Trailpoints work?",
    "Can I cancel my order?",
    "Do gift cards expire?",
    "What payment methods do you accept?",
    "Do you have a student discount?",
]
#: Oversize kinds and the status each must get (the oversize slot cycles through them).
OVERSIZE = {"huge-body": 413, "many-stops": 400, "long-stop": 400, "huge-seed": 400}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


# ----- reliability: the driver ------------------------------------------------------------


@dataclass
class LoadPlan:
    """What :func:`drive` sends. ``mix``: the reliability mix into conversations, else plain
    streams (compare mode); ``max_tries`` counts the first try; ``seconds`` bounds sending,
    ``timeout`` each request."""

    requests: int = 1000
    clients: int = 16
    mix: bool = True
    max_tokens: int = 0  # 0: 8 to 16, by request
    conversations: int = 0  # 0: requests // 10, at least 1
    max_tries: int = 8
    body_limit: int = 1 << 20
    seconds: float = 900.0
    timeout: float = 120.0


@dataclass
class Outcome:
    """One request, after its retries. ``status`` is the last HTTP status, an exception's
    name, or ``"not sent"``; ``complete``: a whole 200 (the JSON, or a stream to ``[DONE]``);
    ``message_id``: the stored reply's id of a complete 200, the exchange's acknowledgement."""

    index: int
    kind: str
    user_text: str
    conversation_id: str | None
    status: int | str = "not sent"
    complete: bool = False
    tokens: int = 0
    retry_after: list[float] = field(default_factory=list)  # one per 429
    waited: list[float] = field(default_factory=list)  # measured sleep after each 429
    ttft: float | None = None
    latency: float | None = None
    message_id: str | None = None
    error_event: dict[str, Any] | None = None


def request_kind(i: int) -> str:
    """Of each 20 requests: 1 oversize (cycling through ``OVERSIZE``), 2 disconnects, the
    rest alternating stream and plain.

    >>> [request_kind(i) for i in (0, 1, 2, 7, 20)]
    ['huge-body', 'stream', 'plain', 'disconnect', 'many-stops']
    """
    slot = i % 20
    if slot == 0:
        return list(OVERSIZE)[(i // 20) % len(OVERSIZE)]
    if slot in (7, 14):
        return "disconnect"
    return "stream" if slot % 2 else "plain"


def request_body(o: Outcome, plan: LoadPlan) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": o.user_text}],
        "max_tokens": plan.max_tokens or 8 + o.index % 9,
        "stream": o.kind in ("stream", "disconnect"),
    }
    if o.conversation_id:
        body["conversation_id"] = o.conversation_id
    if o.kind == "huge-body":
        body["messages"][0]["content"] = "x" * (plan.body_limit + 1024)
    elif o.kind == "many-stops":
        body["stop"] = ["a", "b", "c", "d", "e"]
    elif o.kind == "long-stop":
        body["stop"] = "s" * 5000
    elif o.kind == "huge-seed":
        body["seed"] = 2**70
    return body


def send_once(http: httpx.Client, o: Outcome, body: dict[str, Any]) -> str | None:
    """One try: sets ``o.status`` (and on a 200 the timings, ``complete``, ``tokens`` and
    ``message_id``); returns the ``Retry-After`` header of a 429."""
    start = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        o.status = r.status_code
        if r.status_code != 200:
            r.read()
            return r.headers.get("retry-after") if r.status_code == 429 else None
        if not body["stream"]:
            final = json.loads(r.read())
            o.latency, o.complete = time.perf_counter() - start, True
            o.message_id, o.tokens = final.get("message_id"), final["usage"]["completion_tokens"]
            return None
        final = {}
        for line in r.iter_lines():
            if line == "data: [DONE]":
                o.complete = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    o.error_event = event["error"]
                    break
                if event["choices"][0]["delta"].get("content") and o.ttft is None:
                    o.ttft = time.perf_counter() - start
                    if o.kind == "disconnect":
                        o.status = "200 (client left)"
                        return None  # leaving the block closes the connection mid-stream
                final = event if event["choices"][0]["finish_reason"] else final
        o.latency = time.perf_counter() - start
        if o.complete:
            o.message_id, o.tokens = final.get("message_id"), final["usage"]["completion_tokens"]
        return None


def send(http: httpx.Client, o: Outcome, plan: LoadPlan) -> None:
    """Send ``o``'s request; on 429 wait ``Retry-After`` seconds and retry (bounded)."""
    body = request_body(o, plan)
    for attempt in range(plan.max_tries):
        try:
            retry_after = send_once(http, o, body)
        except (httpx.HTTPError, ValueError, KeyError) as e:  # ValueError: bad JSON
            o.status = type(e).__name__
            return
        if o.status != 429 or attempt == plan.max_tries - 1:
            return
        o.retry_after.append(float(retry_after) if (retry_after or "").isdigit() else 1.0)
        slept = time.monotonic()
        time.sleep(o.retry_after[-1])
        o.waited.append(time.monotonic() - slept)


def drive(base: str, api_key: str, plan: LoadPlan) -> list[Outcome]:
    """Create the conversations (``plan.mix``), then send ``plan.requests`` requests from
    ``plan.clients`` threads (each takes the next request when its last one is done)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    conversations: list[str | None] = [None]
    if plan.mix:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            n = plan.conversations or max(1, plan.requests // 10)
            made = [http.post("/v1/conversations", json={"title": "load"}) for _ in range(n)]
            conversations = [r.raise_for_status().json()["id"] for r in made]
    outcomes = [
        Outcome(
            i,
            request_kind(i) if plan.mix else "stream",
            # unique in the mix, so that check_stored finds it again
            f"{QUESTIONS[i % len(QUESTIONS)]} (request {i})"
            if plan.mix
            else QUESTIONS[i % len(QUESTIONS)],
            # blocks of 10 consecutive requests (sent at once, mixed kinds) per conversation
            conversations[i // 10 % len(conversations)],
        )
        for i in range(plan.requests)
    ]
    todo, lock = iter(outcomes), threading.Lock()
    stop_at = time.monotonic() + plan.seconds

    def client() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=plan.timeout) as http:
            while time.monotonic() < stop_at:
                with lock:
                    o = next(todo, None)
                if o is None:
                    return
                send(http, o, plan)

    threads = [threading.Thread(target=client) for _ in range(plan.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


# ----- reliability: the store check and the report --------------------------------------


@dataclass
class Stored:
    """What the store holds for the run's requests."""

    acknowledged: int = 0
    missing: list[str] = field(default_factory=list)  # acknowledged but not (fully) stored
    disconnected: int = 0
    disconnected_stored: int = 0
    messages: int = 0
    orphan_questions: int = 0  # a user message with no reply after it


def check_stored(base: str, api_key: str, outcomes: list[Outcome]) -> Stored:
    """Read every conversation back and count: each acknowledged reply is stored with its
    question just before it; how many left-mid-stream exchanges were stored anyway."""
    headers = {"Authorization": f"Bearer {api_key}"}
    messages: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        for cid in sorted({o.conversation_id for o in outcomes if o.conversation_id}):
            r = http.get(f"/v1/conversations/{cid}")
            r.raise_for_status()
            messages[cid] = r.json()["messages"]
    found = Stored(messages=sum(len(m) for m in messages.values()))
    questions: Counter[str] = Counter()
    for stored in messages.values():  # some may be empty: all their requests refused
        for k, m in enumerate(stored):
            if m["role"] == "user":
                questions[m["content"]] += 1
                found.orphan_questions += k + 1 == len(stored) or stored[k + 1]["role"] == "user"
    for o in outcomes:
        if o.message_id:
            found.acknowledged += 1
            stored = messages[o.conversation_id or ""]
            at = next((k for k, m in enumerate(stored) if m["id"] == o.message_id), None)
            if at is None or at == 0 or stored[at - 1]["content"] != o.user_text:
                found.missing.append(o.message_id)
        elif o.kind == "disconnect" and o.status == "200 (client left)":
            found.disconnected += 1
            found.disconnected_stored += questions[o.user_text] > 0
    return found


def summarize(outcomes: list[Outcome], stored: Stored, seconds: float) -> dict[str, Any]:
    """The figures of a run, and its ``problems`` (empty: the run passed)."""
    sent = [o for o in outcomes if o.status != "not sent"]
    statuses = Counter(str(o.status) for o in outcomes)
    oversize = [o for o in sent if o.kind in OVERSIZE]
    ttft = [o.ttft for o in sent if o.ttft is not None]
    latency = [o.latency for o in sent if o.latency is not None]
    summary = {
        "requests": len(outcomes),
        "sent": len(sent),
        "statuses": dict(sorted(statuses.items())),
        "5xx": sum(isinstance(o.status, int) and o.status >= 500 for o in sent),
        "error_events": Counter(o.error_event.get("type") for o in sent if o.error_event),
        "429": sum(len(o.retry_after) + (o.status == 429) for o in sent),
        "gave_up_429": sum(o.status == 429 for o in sent),
        "retry_after_s": sorted({a for o in sent for a in o.retry_after}),
        "waited_s": sum(sum(o.waited) for o in sent),
        "oversize": len(oversize),
        "oversize_refused": sum(o.status == OVERSIZE[o.kind] for o in oversize),
        "client_errors": sum(isinstance(o.status, str) and o.status[0].isalpha() for o in sent),
        "ttft_p50": percentile(ttft, 0.5),
        "ttft_p95": percentile(ttft, 0.95),
        "latency_p50": percentile(latency, 0.5),
        "latency_p95": percentile(latency, 0.95),
        "seconds": seconds,
        "stored": stored,
    }
    problems = []
    if summary["5xx"] or summary["error_events"].get("server_error"):
        problems.append(f"{summary['5xx']} 5xx, {dict(summary['error_events'])} error events")
    if stored.missing:
        problems.append(f"{len(stored.missing)} acknowledged replies missing from the store")
    if summary["oversize_refused"] != len(oversize):
        problems.append(f"{len(oversize) - summary['oversize_refused']} oversize not refused")
    if summary["client_errors"]:
        problems.append(f"{summary['client_errors']} transport or protocol errors")
    summary["problems"] = problems
    return summary


def report(summary: dict[str, Any]) -> list[str]:
    """The run's figures as the lines ``main`` prints, ending with the verdict line."""
    s, stored = summary, summary["stored"]
    events = ", ".join(f"{k} {v}" for k, v in s["error_events"].items()) or "none"
    waits = "/".join(f"{a:g}" for a in s["retry_after_s"]) or "-"
    return [
        f"requests {s['requests']} (sent {s['sent']}) in {s['seconds']:.1f} s",
        "statuses: " + ", ".join(f"{k}: {v}" for k, v in s["statuses"].items()),
        f"5xx: {s['5xx']} (goal 0); error events in 200 streams: {events}",
        f"429: {s['429']}, each retried after its Retry-After ({waits} s; waited "
        f"{s['waited_s']:.1f} s in all); "
        f"gave up after the last try: {s['gave_up_429']}",
        f"oversize: {s['oversize_refused']} of {s['oversize']} refused with the expected 413/400",
        f"time to first token (streamed 200s) p50 {s['ttft_p50']:.3f} s, p95 {s['ttft_p95']:.3f} s",
        f"latency (answered attempt) p50 {s['latency_p50']:.3f} s, p95 {s['latency_p95']:.3f} s",
        f"acknowledged vs stored: {stored.acknowledged - len(stored.missing)} of "
        f"{stored.acknowledged} acknowledged replies stored with their question "
        f"({stored.messages} messages in the store, {stored.orphan_questions} questions "
        "without a reply)",
        f"left mid-stream: {stored.disconnected}, of which stored anyway "
        f"{stored.disconnected_stored}",
        "verdict: " + ("PASS" if not s["problems"] else "FAIL: " + "; ".join(s["problems"])),
    ]


def cpu_summary() -> str:
    """``lscpu``'s model name, CPU count, whether AVX-512 and AMX are there, and the load
    average now (other work on the machine slows the run)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "").strip() or platform.processor() or "unknown"
    flags = fields.get("Flags", "").split()
    avx512 = [f for f in flags if f.startswith("avx512")]
    amx = [f for f in flags if f.startswith("amx")]
    has_avx512 = f"yes ({' '.join(avx512)})" if avx512 else "no"
    return (
        f"{name}, {os.cpu_count()} CPUs; avx512: {has_avx512}; amx: {' '.join(amx) or 'no'}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )


# ----- the server -------------------------------------------------------------------------


@contextlib.contextmanager
def serving(*flags: str) -> Iterator[str]:
    """``chattune serve FLAGS`` on a free 127.0.0.1 port with a fresh database; yields its
    base URL once ``/health`` answers (at most 180 s), and stops it when the block ends."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chattune-bench-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log:  # a file, not a pipe: a full pipe would stall it
            server = subprocess.Popen(
                [sys.executable, "-m", "chattune.cli", "serve", "--port", str(port),
                 "--db", str(Path(tmp) / "chat.db"), "--api-key", API_KEY, *flags],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while not _healthy(base):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=60)
            tail = log_path.read_text()[-3000:]
            if "Traceback" in tail:
                print(f"server log (tail):\n{tail}", file=sys.stderr)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def run_reliability(args: argparse.Namespace) -> int:
    plan = LoadPlan(requests=args.requests, clients=args.clients, max_tries=args.max_tries,
                    seconds=args.seconds)  # fmt: skip
    flags = ["--max-concurrency", str(args.concurrency), "--max-queue", str(args.max_queue),
             "--request-timeout", "120", "--max-tokens-limit", "64"]  # fmt: skip
    print(f"cpu: {cpu_summary()}")
    print(f"server: chattune serve {' '.join(flags)}; {plan.clients} clients", flush=True)
    with serving(*flags) as base:
        start = time.perf_counter()
        outcomes = drive(base, API_KEY, plan)
        seconds = time.perf_counter() - start
        stored = check_stored(base, API_KEY, outcomes)
    summary = summarize(outcomes, stored, seconds)
    print("\n".join(report(summary)))
    return 1 if summary["problems"] else 0


# ----- compare: streaming clients vs a plain generate loop ------------------------------


def run_server_load(args: argparse.Namespace) -> dict:
    """Streaming clients only (no conversations, a queue that takes them all)."""
    plan = LoadPlan(args.requests, args.clients, mix=False, max_tokens=args.max_tokens,
                    seconds=args.seconds, timeout=300)  # fmt: skip
    with serving("--max-concurrency", str(args.concurrency), "--max-queue", str(args.requests),
                 "--max-tokens-limit", str(max(args.max_tokens, 64))) as base:  # fmt: skip
        start = time.perf_counter()
        outcomes = drive(base, API_KEY, plan)
        wall = time.perf_counter() - start
    ok = [o for o in outcomes if o.complete and o.latency]
    return {
        "requests": sum(o.status != "not sent" for o in outcomes),
        "errors": sum(o.status != "not sent" and not o.complete for o in outcomes),
        "ttft_p50": percentile([o.ttft or o.latency for o in ok], 0.5),
        "ttft_p95": percentile([o.ttft or o.latency for o in ok], 0.95),
        "stream_tokens_per_s": statistics.mean(o.tokens / o.latency for o in ok),
        "total_tokens_per_s": sum(o.tokens for o in ok) / wall,
    }


def run_plain_loop(args: argparse.Namespace) -> dict:
    import torch

    from chattune.data.render import generation_prompt_ids
    from chattune.data.types import Message
    from chattune.model.loading import load_model

    model, tok = load_model("smollm2-135m-instruct")
    model.eval()
    prompts = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([generation_prompt_ids(tok, [Message("user", prompt)])])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=args.max_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        tokens += out.shape[1] - ids.shape[1]
    return {"requests": len(prompts), "total_tokens_per_s": tokens / (time.perf_counter() - start)}


def run_compare(args: argparse.Namespace) -> int:
    served = run_server_load(args)
    plain = run_plain_loop(args)
    print(
        f"server ({args.clients} streaming clients, {args.requests} requests in all, "
        f"{args.concurrency} slots, max_tokens {args.max_tokens}):"
    )
    print(f"  requests {served['requests']}, errors {served['errors']}")
    print(f"  time to first token p50 {served['ttft_p50']:.2f} s, p95 {served['ttft_p95']:.2f} s")
    print(
        f"  per-stream {served['stream_tokens_per_s']:.1f} tokens/s, "
        f"total {served['total_tokens_per_s']:.1f} tokens/s"
    )
    print(f"plain generate loop: {plain['total_tokens_per_s']:.1f} tokens/s")
    print(
        f"server total / plain loop: "
        f"{served['total_tokens_per_s'] / plain['total_tokens_per_s']:.2f}x"
    )
    return 0


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", action="store_true", help="the speed comparison mode")
    parser.add_argument("--clients", type=int, help="client threads (16; compare: 4)")
    parser.add_argument("--requests", type=int, help="requests in all (1000; compare: 8)")
    parser.add_argument("--max-tokens", type=int, default=48, help="compare: per reply")
    parser.add_argument("--concurrency", type=int, default=2, help="server generation slots")
    parser.add_argument("--max-queue", type=int, default=8, help="reliability: server queue")
    parser.add_argument("--max-tries", type=int, default=8, help="reliability: tries per request")
    parser.add_argument("--seconds", type=float, help="stop sending after this (900; compare: 300)")
    args = parser.parse_args()
    compare = args.compare
    args.clients = args.clients or (4 if compare else 16)
    args.requests = args.requests or (8 if compare else 1000)
    args.seconds = args.seconds or (300 if compare else 900)
    sys.exit(run_compare(args) if compare else run_reliability(args))


if __name__ == "__main__":
    main()
