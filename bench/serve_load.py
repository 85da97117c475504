"""Serving under load vs a plain transformers generate loop, in one run.

Starts ``chattune serve`` with the embedded model on 127.0.0.1, drives it with N concurrent
streaming clients (each sends a bounded number of requests, and the whole run is bounded in
time), and reports time-to-first-token p50/p95, per-stream and total generated tokens/s, and
error counts. Then it generates the same replies with a plain ``model.generate`` loop in
one process and prints the ratio.

    python bench/serve_load.py [--clients 4] [--requests 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def client(base: str, prompts: list[str], max_tokens: int, out: list[dict], deadline: float):
    with httpx.Client(base_url=base, timeout=300) as http:
        for prompt in prompts:
            if time.monotonic() > deadline:
                return
            start, first, pieces = time.perf_counter(), None, 0
            try:
                with http.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={
                        "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": max_tokens,
                        "stream": True,
                    },
                ) as r:
                    if r.status_code != 200:
                        out.append({"error": r.status_code})
                        continue
                    usage = None
                    for line in r.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if event["choices"][0]["delta"].get("content"):
                            first = first or time.perf_counter()
                            pieces += 1
                        usage = event.get("usage") or usage
                end = time.perf_counter()
                tokens = usage["completion_tokens"] if usage else pieces
                out.append(
                    {"ttft": (first or end) - start, "tokens": tokens, "seconds": end - start}
                )
            except httpx.HTTPError as e:
                out.append({"error": type(e).__name__})


def run_server_load(args) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chattune.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            f"/tmp/chattune-bench-{port}.db",
            "--max-concurrency",
            str(args.concurrency),
            "--max-queue",
            str(args.clients * args.requests),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)
        results: list[dict] = []
        stop_at = time.monotonic() + args.seconds
        threads = [
            threading.Thread(
                target=client,
                args=(
                    base,
                    [
                        QUESTIONS[(i * args.requests + j) % len(QUESTIONS)]
                        for j in range(args.requests)
                    ],
                    args.max_tokens,
                    results,
                    stop_at,
                ),
            )
            for i in range(args.clients)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    ok = [r for r in results if "ttft" in r]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50": percentile([r["ttft"] for r in ok], 0.5),
        "ttft_p95": percentile([r["ttft"] for r in ok], 0.95),
        "stream_tokens_per_s": statistics.mean(r["tokens"] / r["seconds"] for r in ok),
        "total_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
    }


def run_plain_loop(args) -> dict:
    import torch

    from chattune.data.render import generation_prompt_ids
    from chattune.data.types import Message
    from chattune.model.loading import load_model

    model, tok = load_model("smollm2-135m-instruct")
    model.eval()
    prompts = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.clients * args.requests)]
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


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2, help="per client")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=2, help="server generation slots")
    parser.add_argument("--seconds", type=float, default=300, help="stop sending after this")
    args = parser.parse_args()
    served = run_server_load(args)
    plain = run_plain_loop(args)
    print(
        f"server ({args.clients} streaming clients x {args.requests} requests, "
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


if __name__ == "__main__":
    main()
