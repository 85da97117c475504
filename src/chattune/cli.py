"""``chattune <verb>``: one flat command table; each command parses flags and calls one
plain ``run_*`` function. Heavy imports (torch, transformers) happen inside the commands, so
``chattune --help`` is instant. Only this module prints; the library logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable

from chattune import kb_cli
from chattune.errors import ChattuneError, ConfigError
from chattune.model.loading import quiet_transformers

log = logging.getLogger("chattune")


def cmd_data_check(args: argparse.Namespace) -> int:
    """Validate data files; print every problem as FILE:LINE: message."""
    from chattune.data.readers import read_many

    items = read_many(args.files, args.format, args.objective)
    kind = "documents" if args.objective == "lm" else "conversations"
    print(f"ok: {len(items)} {kind} in {len(args.files)} file(s)")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    """Count conversations, turns and tokens under the model's chat template."""
    from chattune.data.stats import run_stats

    quiet_transformers()

    stats = run_stats(args.files, args.base, args.max_len, args.mask, args.format)
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune a base model on conversations (or raw text with --objective lm)."""
    from chattune.config import FLAGS, build_config
    from chattune.train.loop import run_train

    quiet_transformers()

    given = {
        FLAGS[flag]: getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag in FLAGS
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None
    }
    cfg = build_config(args.config, given, args.overrides)
    summary = run_train(cfg)
    print(f"done: {cfg.train.output}")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Answer prompts (or the questions of a data file) with one model, or two side by side."""
    from chattune.chat.generate import run_generate

    quiet_transformers()

    for block in run_generate(
        args.model, args.compare, args.prompt, args.data, args.n, args.max_new_tokens, args.system
    ):
        print(block, flush=True)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat in the terminal (streaming; /reset, /system, /save); with a pipe on stdin,
    answer one message per line."""
    from chattune.chat.engine import ChatEngine, TransformersBackend
    from chattune.chat.profile import load_profile
    from chattune.chat.repl import run_chat
    from chattune.model.loading import load_model

    quiet_transformers()
    profile = load_profile(args.profile)
    knowledge = _knowledge(args.kb, profile)
    engine = ChatEngine(TransformersBackend(*load_model(args.model)), profile, knowledge)
    interactive = sys.stdin.isatty()

    def lines():
        while True:
            try:
                yield input("you> ") if interactive else next(sys.stdin)
            except (EOFError, StopIteration):
                return

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run_chat(engine, lines(), write, interactive)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the model: OpenAI-compatible API (with SSE streaming), conversations, feedback
    and a web chat page at /."""
    import uvicorn

    from chattune.chat.engine import ChatEngine, TransformersBackend
    from chattune.chat.profile import load_profile
    from chattune.model.loading import load_model
    from chattune.serve.app import build_app
    from chattune.serve.store import Store

    quiet_transformers()
    raw_keys = args.api_key or os.environ.get("CHATTUNE_API_KEY", "")
    keys = [k.strip() for k in raw_keys.split(",") if k.strip()]
    if not keys and not args.insecure_no_auth and not _is_loopback(args.host):
        raise ConfigError(
            f"--host {args.host} without --api-key would let anyone who can reach this "
            "machine chat, read and delete conversations; pass --api-key KEY (or set "
            "CHATTUNE_API_KEY), or --insecure-no-auth if that is really what you want"
        )
    options = _serve_options(args)
    profile = load_profile(args.profile)
    knowledge = _knowledge(args.kb, profile)
    store = Store(args.db)  # before the model: a wrong --db fails in a second
    engine = ChatEngine(TransformersBackend(*load_model(args.model)), profile, knowledge)
    app = build_app(engine, store, args.model, keys, insecure_no_auth=args.insecure_no_auth,
                    **options.model_dump())  # fmt: skip
    if not keys:
        log.warning("serving without --api-key: anyone who can reach %s can use it", args.host)
    print(f"chattune: http://{args.host}:{args.port}/ (model {args.model})", flush=True)
    # uvicorn stops accepting on SIGTERM/SIGINT and lets in-flight replies finish (bounded),
    # then re-raises the signal to the handler it found: ours, which makes that a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def _serve_options(args: argparse.Namespace):
    """The server's limits from their flags, checked before anything loads."""
    from pydantic import ValidationError

    from chattune.serve.protocol import ServeOptions

    fields = ServeOptions.model_fields
    try:
        return ServeOptions(**{name: getattr(args, name) for name in fields})
    except ValidationError as e:
        problems = [
            f"--{str(item['loc'][0]).replace('_', '-')}: {item['msg']} (got {item['input']!r})"
            for item in e.errors()
        ]
        raise ConfigError("; ".join(problems)) from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _knowledge(folder: str | None, profile):
    """The profile's knowledge settings on ``--kb``'s retriever (checked before the model
    loads, so a broken knowledge base fails in a second, not after a minute)."""
    if folder is None:
        return None
    from chattune.knowledge.grounding import Knowledge
    from chattune.knowledge.retrieve import Retriever
    from chattune.knowledge.store import KnowledgeBase

    return Knowledge(Retriever(KnowledgeBase(folder)), profile.knowledge)


def cmd_export_feedback(args: argparse.Namespace) -> int:
    """Write thumbs-up replies and corrections from the server's database as training JSONL:
    one {"messages": [...], "owner": HASH} per line (HASH: the API key's hash)."""
    import json

    from chattune.serve.store import Store

    count = 0
    with open(args.out, "w", encoding="utf-8") as f:
        for example in Store(args.db).feedback_conversations(owner=args.owner):
            f.write(json.dumps(example) + "\n")
            count += 1
    print(f"wrote {count} conversations to {args.out}")
    return 0


def _generation_options(args: argparse.Namespace):
    from chattune.model.generation import GenerationOptions

    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a model on test conversations (perplexity, BLEU, ROUGE, F1, distinct-n, ...),
    optionally against a second model with bootstrap intervals; or summarise --ratings."""
    if args.ratings:
        from chattune.evaluate.ratings import format_summary, summarize_ratings

        print(format_summary(summarize_ratings(args.ratings)))
        return 0
    if not args.data:
        raise ChattuneError("--data: give the test conversations (or --ratings FILE)")
    from chattune.evaluate.report import write_report
    from chattune.evaluate.run import EvalSettings, format_table, run_eval, write_json

    quiet_transformers()
    settings = EvalSettings(
        model=args.model,
        data=args.data,
        compare=args.compare,
        max_examples=args.max_examples,
        max_len=args.max_len,
        batch_size=args.batch_size,
        bootstrap=args.bootstrap,
        generation=_generation_options(args),
    )
    result = run_eval(settings)
    print(format_table(result))
    if args.json:
        write_json(result, args.json, args.per_example)
        print(f"wrote {args.json}")
    if args.report:
        files = write_report(result, args.report)
        print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_rate(args: argparse.Namespace) -> int:
    """Rate two models' replies blind, in the terminal; resumable."""
    from chattune.evaluate.ratings import format_summary, run_rate, summarize_ratings
    from chattune.evaluate.run import load_examples
    from chattune.model.loading import load_model

    quiet_transformers()
    examples = load_examples(args.data, args.max_examples)
    models = {spec: load_model(spec) for spec in args.models}
    run_rate(examples, models, args.out, _generation_options(args), seed=args.seed)
    print(format_summary(summarize_ratings(args.out)))
    return 0


def _generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "messages", "sharegpt", "csv", "dailydialog", "text"],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chattune", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="check and describe data files")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    check = data_verbs.add_parser("check", help=cmd_data_check.__doc__)
    check.add_argument("files", nargs="+")
    check.add_argument("--objective", default="chat", choices=["chat", "lm"])
    _data_flags(check)
    check.set_defaults(func=cmd_data_check)
    stats = data_verbs.add_parser("stats", help=cmd_data_stats.__doc__)
    stats.add_argument("files", nargs="+")
    stats.add_argument(
        "--base",
        default="smollm2-135m-instruct",
        help="model whose tokenizer and chat template to use",
    )
    stats.add_argument("--max-len", type=int, default=1024)
    stats.add_argument("--mask", default="assistant", choices=["assistant", "last", "all"])
    _data_flags(stats)
    stats.set_defaults(func=cmd_data_stats)
    export = data_verbs.add_parser("export-feedback", help=cmd_export_feedback.__doc__)
    export.add_argument("--db", default="chattune.db", help="sqlite path or SQLAlchemy URL")
    export.add_argument("--out", required=True)
    export.add_argument("--owner", help="only this owner's conversations (the hash in 'owner')")
    export.set_defaults(func=cmd_export_feedback)

    train = verbs.add_parser(
        "train",
        help=cmd_train.__doc__,
        epilog="Any config field can be set as key=value, e.g. train.lr=1e-4",
    )
    train.add_argument("--config", help="YAML run file (see configs/)")
    train.add_argument("--data", action="append", help="training file (repeatable)")
    train.add_argument("--val-data", action="append", help="validation file (repeatable)")
    train.add_argument("--val-split", type=float, help="hold out this share of --data")
    train.add_argument(
        "--format", choices=["auto", "messages", "sharegpt", "csv", "dailydialog", "text"]
    )
    train.add_argument("--objective", choices=["chat", "lm"])
    train.add_argument("--max-len", type=int)
    train.add_argument("--mask", choices=["assistant", "last", "all"])
    train.add_argument("--base", help="smollm2-135m-instruct | HF folder | FILE.gguf")
    train.add_argument("--method", choices=["lora", "adalora", "ia3", "freeze", "full"])
    train.add_argument("--output")
    train.add_argument("--epochs", type=float)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--eval-every", type=int)
    train.add_argument("--save-every", type=int)
    train.add_argument("--patience", type=int)
    train.add_argument(
        "--eval-generate",
        type=int,
        metavar="N",
        help="also score generated replies on N validation turns at each eval",
    )
    train.add_argument("--seed", type=int)
    train.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue from the newest complete checkpoint in --output",
    )
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(func=cmd_train)

    gen = verbs.add_parser("generate", help=cmd_generate.__doc__)
    gen.add_argument("--model", default="smollm2-135m-instruct")
    gen.add_argument("--compare", help="a second model to answer the same prompts")
    gen.add_argument("--prompt", action="append", help="a user message (repeatable)")
    gen.add_argument("--data", help="answer the first user turn of conversations in this file")
    gen.add_argument("--n", type=int, default=3, help="how many conversations from --data")
    gen.add_argument("--max-new-tokens", type=int, default=96)
    gen.add_argument("--system", help="system prompt for --prompt")
    gen.set_defaults(func=cmd_generate)

    chat = verbs.add_parser("chat", help=cmd_chat.__doc__)
    chat.add_argument("--model", default="smollm2-135m-instruct")
    chat.add_argument("--profile", help="bot profile YAML (see examples/support/bot.yaml)")
    chat.add_argument("--kb", help="answer from this knowledge base (see chattune kb add)")
    chat.set_defaults(func=cmd_chat)

    serve = verbs.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--model", default="smollm2-135m-instruct")
    serve.add_argument("--profile", help="bot profile YAML")
    serve.add_argument("--kb", help="answer from this knowledge base, with sources")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="accepted key(s), comma-separated; or CHATTUNE_API_KEY")
    serve.add_argument(
        "--db", default="chattune.db", help="sqlite path, sqlite:///path or postgresql://... URL"
    )
    serve.add_argument("--max-concurrency", type=int, default=1, help="replies generated at once")
    serve.add_argument("--max-queue", type=int, default=8, help="waiting requests before 429")
    serve.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="ceiling on a request's max_tokens"
    )
    serve.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413"
    )
    serve.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds one request may take"
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without --api-key (anyone who reaches it can use it)",
    )
    serve.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json")
    serve.add_argument(
        "--graceful-timeout",
        type=int,
        default=30,
        help="seconds in-flight replies get to finish on shutdown",
    )
    serve.set_defaults(func=cmd_serve)

    ev = verbs.add_parser("eval", help=cmd_eval.__doc__)
    ev.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="chattune output folder, HF folder, .gguf or embedded name",
    )
    ev.add_argument("--data", action="append", help="test conversations (repeatable)")
    ev.add_argument("--compare", help="a second model, scored on the same examples")
    ev.add_argument("--max-examples", type=int, help="at most this many assistant turns")
    ev.add_argument("--max-len", type=int, default=1024)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% CI")
    ev.add_argument("--json", help="write metrics (stable keys) to this file")
    ev.add_argument("--per-example", action="store_true", help="include every reply in --json")
    ev.add_argument("--report", help="write an HTML report (and .md beside it)")
    ev.add_argument("--ratings", help="summarise a ratings file from `chattune rate` instead")
    _generation_flags(ev)
    ev.set_defaults(func=cmd_eval)

    rate = verbs.add_parser("rate", help=cmd_rate.__doc__)
    rate.add_argument("--data", action="append", required=True)
    rate.add_argument("--models", nargs=2, required=True, metavar=("A", "B"))
    rate.add_argument("--out", required=True, help="ratings JSONL (appended; resumable)")
    rate.add_argument("--max-examples", type=int)
    _generation_flags(rate)
    rate.set_defaults(func=cmd_rate)
    kb_cli.add_parser(verbs)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data check": cmd_data_check,
    "data stats": cmd_data_stats,
    "train": cmd_train,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "serve": cmd_serve,
    "data export-feedback": cmd_export_feedback,
    "eval": cmd_eval,
    "rate": cmd_rate,
    **kb_cli.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    # chattune never downloads; make sure no library behind it tries (or phones home).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in (
        "httpx",
        "urllib3",
        "transformers",
        "accelerate",
        "peft",
        "absl",
        "matplotlib",
        "sentence_transformers",
        "faiss",
        "bm25s",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ChattuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        detail = f" ({e})" if str(e) else ""
        print(f"interrupted{detail}; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
