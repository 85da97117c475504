"""The load bench's reliability driver, small: a real HTTP server on 127.0.0.1 with a fake
backend, a queue small enough that 429s happen, and every acknowledged reply found again in
the store afterwards. (``bench/serve_load.py --requests 1000 --clients 16`` is the full run.)
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from chattune.chat.engine import ChatEngine
from chattune.serve.app import build_app
from chattune.serve.store import Store
from tests.conftest import FakeBackend, live_server

BENCH = Path(__file__).parents[1] / "bench" / "serve_load.py"


def load_bench() -> ModuleType:
    """``bench/serve_load.py`` as a module (``bench`` is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


class PacedBackend(FakeBackend):
    """Four pieces, 25 ms apart: slow enough that 8 clients overfill 2 slots and a queue of 4."""

    def stream(self, prompt_ids, options, stop, cancel):
        for piece in ["Hello", " there", ",", " friend"]:
            if cancel.is_set():
                return
            time.sleep(0.025)
            yield piece


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


def test_small_load_run_loses_nothing(bench, tokenizer, tmp_path) -> None:
    app = build_app(
        ChatEngine(PacedBackend(tokenizer, [])),
        Store(str(tmp_path / "chat.db")),
        "tiny",
        ["sk-load"],
        max_concurrency=2,
        max_queue=4,
    )
    plan = bench.LoadPlan(requests=120, clients=8, seconds=60, timeout=30)
    with live_server(app) as url:
        start = time.perf_counter()
        outcomes = bench.drive(url, "sk-load", plan)
        seconds = time.perf_counter() - start
        # plus a conversation whose only request was refused: it holds no messages at all
        auth = {"Authorization": "Bearer sk-load"}
        empty = httpx.post(f"{url}/v1/conversations", headers=auth).json()["id"]
        refused = bench.Outcome(120, "huge-body", "x", empty, status=413)
        stored = bench.check_stored(url, "sk-load", [*outcomes, refused])
    summary = bench.summarize(outcomes, stored, seconds)
    print("\n".join(bench.report(summary)))

    assert summary["sent"] == 120 and summary["5xx"] == 0 and not summary["error_events"]
    # the queue overflowed, and every 429 was retried only after its Retry-After
    assert summary["429"] > 0 and all(1 <= s <= 60 for s in summary["retry_after_s"])
    retried = [o for o in outcomes if o.retry_after]
    assert all(w >= a for o in retried for w, a in zip(o.waited, o.retry_after, strict=True))
    assert retried and all(o.status != 429 for o in retried)  # ... and then admitted
    # every oversize request was refused with its own status: 413 before parsing, else 400
    oversize = [o for o in outcomes if o.kind in bench.OVERSIZE]
    assert {o.kind for o in oversize} == set(bench.OVERSIZE)
    assert all(o.status == bench.OVERSIZE[o.kind] for o in oversize)
    # every complete 200 was acknowledged with a message id, and is stored with its question
    answered = [o for o in outcomes if o.kind in ("stream", "plain") and o.status == 200]
    assert all(o.message_id for o in answered) and stored.acknowledged == len(answered)
    assert stored.missing == [] and stored.orphan_questions == 0
    assert stored.messages == 2 * (len(answered) + stored.disconnected_stored)
    left = [o for o in outcomes if o.status == "200 (client left)"]
    assert left and stored.disconnected == len(left) and all(o.ttft for o in left)
    assert summary["problems"] == []


def test_the_verdict_fails_on_a_5xx_a_lost_reply_or_a_broken_connection(bench) -> None:
    ok = bench.Outcome(0, "plain", "q", "conv-1", status=200, complete=True, message_id="m1")
    crashed = bench.Outcome(1, "stream", "q", "conv-1", status=500)
    broken = bench.Outcome(2, "plain", "q", "conv-1", status="RemoteProtocolError")
    accepted = bench.Outcome(3, "huge-seed", "q", "conv-1", status=200)
    stored = bench.Stored(acknowledged=1, missing=["m1"])
    problems = bench.summarize([ok, crashed, broken, accepted], stored, 1.0)["problems"]
    assert len(problems) == 4  # the 5xx, the lost reply, the broken connection, the 200
    lost = bench.report(bench.summarize([ok], stored, 1.0))[-1]
    assert lost == "verdict: FAIL: 1 acknowledged replies missing from the store"
    assert bench.summarize([ok], bench.Stored(acknowledged=1), 1.0)["problems"] == []
