"""One learning round, end to end, against a running server (``make demo`` runs it).

1. registers the tuned bot (``runs/demo``) as ``pine-v1`` in a registry and serves it with
   ``chattune serve --registry ... --bot pine`` (the server follows the registry);
2. sends the customers' shipping questions of ``updates/corrections.jsonl`` through the
   HTTP API, each in its own conversation, and corrects each reply with the new policy
   (free shipping from $40 now, not $60), as a support lead would in the web page;
3. runs ``chattune learn`` on the server's database: feedback becomes new training data,
   old conversations are replayed, answers stating the old threshold are retired, the
   candidate is trained, evaluated and gated, and promoted if it passes;
4. waits for the running server to switch to the new version (no restart), then asks the
   questions of ``updates/checks.jsonl``: new wordings of the changed policy, and old
   questions whose answers must not have been forgotten.

The checks are asked before and after the round. Exits non-zero if the round is not
promoted, a changed-policy check is answered without the new policy, or an old question
answered right before is answered wrong after (forgetting). An old question that was
already answered wrong before the round (the small demo model does not know everything it
was trained on) is reported, and not counted against the round.

    python examples/support/learning_demo.py [--run runs/demo] [--work runs/demo-learning]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHATTUNE = [sys.executable, "-m", "chattune.cli"]
PROFILE = HERE / "bot.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chattune(*args: str) -> None:
    print("$ chattune " + " ".join(args), flush=True)
    subprocess.run([*CHATTUNE, *args], cwd=ROOT, check=True)


@contextlib.contextmanager
def server(registry: Path, db: Path, port: int) -> Iterator[str]:
    """``chattune serve`` following the registry, on 127.0.0.1; stopped when done."""
    args = ["serve", "--registry", str(registry), "--bot", "pine", "--db", str(db),
            "--profile", str(PROFILE), "--port", str(port), "--follow-interval", "1"]  # fmt: skip
    print("$ chattune " + " ".join(args), flush=True)
    proc = subprocess.Popen([*CHATTUNE, *args], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 300 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ask(client: httpx.Client, question: str) -> tuple[str, str, str]:
    """(conversation id, message id, reply) of one question in a new conversation."""
    cid = client.post("/v1/conversations", json={"title": question[:40]}).json()["id"]
    body = {"messages": [{"role": "user", "content": question}], "conversation_id": cid}
    reply = client.post("/v1/chat/completions", json=body).raise_for_status().json()
    return cid, reply["message_id"], reply["choices"][0]["message"]["content"]


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def version(client: httpx.Client) -> str:
    return client.get("/v1/models").json()["data"][0].get("version", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="the tuned bot (chattune train)")
    parser.add_argument(
        "--work", default="runs/demo-learning", help="registry and database (outside --run)"
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    registry, db = work / "models", work / "chat.db"
    chattune("models", "register", args.run, "--bot", "pine", "--registry", str(registry))
    corrections = read_jsonl(HERE / "updates" / "corrections.jsonl")
    checks = read_jsonl(HERE / "updates" / "checks.jsonl")

    with server(registry, db, free_port()) as url, httpx.Client(base_url=url, timeout=300) as c:
        print(f"\nserving {version(c)}; the checks before learning:")
        before = run_checks(c, checks)
        print("\ncustomers ask about shipping; a person corrects each reply:")
        for item in corrections:
            cid, mid, reply = ask(c, item["question"])
            print(f"  Q: {item['question']}\n  bot: {reply}")
            feedback = {"rating": "down", "correction": item["correction"]}
            c.post(f"/v1/conversations/{cid}/messages/{mid}/feedback", json=feedback)
        print(f'  corrected {len(corrections)} replies: "{corrections[0]["correction"]}"\n')

        chattune("learn", "--registry", str(registry), "--bot", "pine", "--db", str(db),
                 "--profile", str(PROFILE), "--retire", r"over \$60",
                 "learn.progress=false")  # fmt: skip
        deadline = time.monotonic() + 300
        while version(c) != "pine-v2":
            if time.monotonic() > deadline:
                raise SystemExit("the round was not promoted (see the report above)")
            time.sleep(1)
        print(f"\nthe running server switched to {version(c)} (no restart); the checks again:")
        after = run_checks(c, checks)
    changed = [ok for check, ok in zip(checks, after, strict=True) if check["kind"] == "changed"]
    forgotten = [check["question"] for check, was, now in zip(checks, before, after, strict=True)
                 if check["kind"] == "old" and was and not now]  # fmt: skip
    kept = sum(was and now for check, was, now in zip(checks, before, after, strict=True)
               if check["kind"] == "old")  # fmt: skip
    print(f"\nchanged policy: {sum(changed)} of {len(changed)} answered with it; old answers: "
          f"{kept} right before and after, {len(forgotten)} forgotten")  # fmt: skip
    if not all(changed) or forgotten or not kept:
        raise SystemExit("the round did not learn the change without forgetting")


def run_checks(client: httpx.Client, checks: list[dict[str, str]]) -> list[bool]:
    """Ask each check's question in a new conversation; whether the reply has ``expect``."""
    results = []
    for check in checks:
        _, _, reply = ask(client, check["question"])
        ok = check["expect"].lower() in reply.lower()
        results.append(ok)
        print(f"  [{'ok' if ok else 'no'}] ({check['kind']}) {check['question']}\n       {reply}")
    return results


if __name__ == "__main__":
    main()
