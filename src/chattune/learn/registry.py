"""The model registry: numbered versions of each bot and the one that is ``current``.

A registry is a folder (``--registry``, default ``models/``) with one folder per bot::

    models/pine/
      current            "3": the version served; replaced atomically (write + rename)
      history.jsonl      one line per promotion or rollback: what became current, when, why
      v1/
        model/           the weights: a peft adapter or a full model, tokenizer, config.yaml
        data/train.jsonl what this version was trained on that its parent was not
        data/val.jsonl   held out from that data: its evaluation set, kept for every later
                         version's forgetting check
        version.json     parent, base, method, data manifest (sha256 of every file, source
                         files and their hashes), evaluation, the gate's decision
        report.md        the learning round's report (versions made by ``chattune learn``)
      v2/ ...

A version is written completely before anyone can select it: its folder is claimed with an
atomic ``mkdir`` (two rounds never get the same number), and ``current`` only ever names a
version whose ``version.json`` exists. Readers (a server following ``current``) therefore see
the old version or the new one, never a half-written one.

Example:
    >>> bot = Registry("models").bot("pine")                  # doctest: +SKIP
    >>> v1 = bot.register_run("runs/demo")                    # a `chattune train` output
    >>> bot.promote(v1.number, "first version")
    >>> bot.current().model_dir
    PosixPath('models/pine/v1/model')
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from chattune.data.types import Conversation
from chattune.errors import ChattuneError, ConfigError

DEFAULT_REGISTRY = "models"
CURRENT = "current"
HISTORY = "history.jsonl"
VERSION_FILE = "version.json"
_BOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON: written beside it, flushed, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_conversations(path: Path, conversations: Iterable[Conversation]) -> dict[str, Any]:
    """Write conversations as ``messages`` JSONL; return the file's manifest entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = write_jsonl(path, ({"messages": c.as_dicts()} for c in conversations))
    return {"file": path.name, "sha256": sha256_file(path), "conversations": count}


@dataclass(frozen=True)
class Version:
    """One numbered version of a bot, read from its folder."""

    bot: str
    number: int
    path: Path

    @property
    def label(self) -> str:
        """``pine-v3``: how replies, reports and ``/v1/models`` name this version."""
        return f"{self.bot}-v{self.number}"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def meta(self) -> dict[str, Any]:
        """``version.json``; ConfigError naming the file if it is not a JSON object."""
        path = self.path / VERSION_FILE
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read this version's record: {e}") from None
        if not isinstance(meta, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return meta

    @property
    def parent(self) -> int | None:
        return self.meta.get("parent")

    def data_file(self, split: str) -> Path | None:
        """``data/train.jsonl`` or ``data/val.jsonl``, if this version has it."""
        path = self.path / "data" / f"{split}.jsonl"
        return path if path.exists() else None

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``version.json`` (atomically)."""
        write_json_atomic(self.path / VERSION_FILE, self.meta | fields)


class Bot:
    """The versions of one bot: register, list, promote, roll back."""

    def __init__(self, root: Path, name: str) -> None:
        if not _BOT_NAME.fullmatch(name):
            raise ConfigError(
                f"--bot {name!r}: a bot name is 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        self.name, self.path = name, root / name

    # ----- reading ---------------------------------------------------------------------

    def versions(self) -> list[Version]:
        """Every complete version (its ``version.json`` written), oldest first."""
        if not self.path.is_dir():
            return []
        found = []
        for child in self.path.iterdir():
            m = _VERSION_DIR.fullmatch(child.name)
            if m and (child / VERSION_FILE).exists():
                found.append(Version(self.name, int(m.group(1)), child))
        return sorted(found, key=lambda v: v.number)

    def version(self, number: int) -> Version:
        v = Version(self.name, number, self.path / f"v{number}")
        if not (v.path / VERSION_FILE).exists():
            known = ", ".join(str(x.number) for x in self.versions()) or "none"
            raise ConfigError(f"bot {self.name!r} has no version {number} (versions: {known})")
        return v

    def current_number(self) -> int | None:
        """The number in ``current`` (one small read: what a server polls), or None."""
        try:
            text = (self.path / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None

    def current(self) -> Version | None:
        number = self.current_number()
        return None if number is None else self.version(number)

    def require_current(self) -> Version:
        current = self.current()
        if current is None:
            raise ConfigError(
                f"bot {self.name!r} in {self.path.parent} has no current version: register a "
                f"training run first (chattune models register RUN --bot {self.name})"
            )
        return current

    def lineage(self, version: Version) -> list[Version]:
        """``version`` and its ancestors, oldest first: whose data it has learned."""
        chain, seen = [version], {version.number}
        while (parent := chain[-1].parent) is not None:
            if parent in seen:  # a hand-edited cycle must not hang a round
                raise ConfigError(f"{self.path}: version {parent} is its own ancestor")
            seen.add(parent)
            chain.append(self.version(parent))
        return chain[::-1]

    def history(self) -> list[dict[str, Any]]:
        """Every promotion and rollback, oldest first (lines that are not records of one
        are skipped: the history explains, the ``current`` file decides)."""
        try:
            records = [r for _, r in read_jsonl(self.path / HISTORY, missing_ok=True)]
        except ChattuneError as e:
            raise ConfigError(f"{self.path / HISTORY}: {e}") from None
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("version"), int)]

    # ----- writing ---------------------------------------------------------------------

    def claim(self) -> Version:
        """A new, empty version folder with the next free number (``mkdir`` is atomic, so
        two rounds at once never share one). It counts as a version once
        ``version.json`` is written."""
        self.path.mkdir(parents=True, exist_ok=True)
        taken = [
            int(m.group(1)) for c in self.path.iterdir() if (m := _VERSION_DIR.fullmatch(c.name))
        ]
        number = max(taken, default=0) + 1
        while True:
            try:
                (self.path / f"v{number}").mkdir()
                return Version(self.name, number, self.path / f"v{number}")
            except FileExistsError:
                number += 1

    def register_run(
        self,
        run: str | Path,
        train: list[Conversation] | None = None,
        val: list[Conversation] | None = None,
        note: str = "",
    ) -> Version:
        """Copy a ``chattune train`` output folder in as a new version (not yet current).

        ``train``/``val`` are the conversations the run trained and validated on (read
        from its ``config.yaml`` by the caller): stored with the version, they are what
        later rounds replay and check for forgetting.
        """
        run = Path(run)
        meta_file = run / "chattune.json"
        if not meta_file.exists():
            raise ConfigError(
                f"{run}: not a chattune training output (no chattune.json); give the "
                "--output folder of a finished `chattune train`"
            )
        run_meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if self.path.resolve().is_relative_to(run.resolve()):
            raise ConfigError(
                f"--registry {self.path.parent} is inside the run {run}: registering would "
                "copy the registry into itself; put the registry outside the run folder"
            )
        version = self.claim()
        try:
            shutil.copytree(run, version.model_dir, ignore=shutil.ignore_patterns("checkpoints"))
            run_meta["base"] = anchor_base(version.model_dir, run_meta.get("base"))
            data: dict[str, Any] = {}
            if train:
                data["train"] = write_conversations(version.path / "data/train.jsonl", train)
            if val:
                data["val"] = write_conversations(version.path / "data/val.jsonl", val)
            self.write_meta(
                version,
                parent=None,
                source=str(run.resolve()),
                base=run_meta.get("base"),
                method=run_meta.get("method"),
                data=data,
                summary={k: run_meta[k] for k in ("steps", "best_eval_loss") if k in run_meta},
                note=note,
            )
        except BaseException:
            shutil.rmtree(version.path, ignore_errors=True)
            raise
        return version

    def write_meta(self, version: Version, **fields: Any) -> None:
        """Write ``version.json``: from here on the version exists."""
        meta = {"version": version.number, "bot": self.name, "created": now_iso(),
                "status": "candidate", **fields}  # fmt: skip
        write_json_atomic(version.path / VERSION_FILE, meta)

    def promote(self, number: int, reason: str = "") -> Version:
        """Make version ``number`` current and record it in the history.

        The history line and the version's status are written first and the pointer is
        moved last (an atomic rename: a reader sees the old number or the new one), so a
        failure half way leaves ``current`` where it was. Promoting the current version
        changes nothing.
        """
        with self._pointer_lock():
            version = self.version(number)
            previous = self.current_number()
            if previous == number:
                return version
            append_jsonl(self.path / HISTORY, {"at": now_iso(), "action": "promote",
                         "version": number, "previous": previous, "reason": reason})  # fmt: skip
            version.update(status="promoted")
            self._point(number)
        return version

    def rollback(self, reason: str = "") -> Version:
        """Make current the version that was current before the current one was promoted.

        Rolling back again walks further back (v3 -> v2 -> v1), never forward again. A
        version the history does not know (a hand-edited ``current``) rolls back to the
        newest earlier version that was ever promoted.
        """
        with self._pointer_lock():
            current = self.current_number()
            if current is None:
                raise ConfigError(f"bot {self.name!r} has no current version to roll back")
            promoted = [r for r in self.history() if r.get("action") == "promote"]
            target = next(
                (r.get("previous") for r in reversed(promoted) if r["version"] == current), None
            )
            if target is None:
                earlier = [v for v in self.versions() if v.number < current
                           and v.meta.get("status") == "promoted"]  # fmt: skip
                target = earlier[-1].number if earlier else None
            if target is None:
                raise ConfigError(f"{self.name}-v{current} is the first version: nothing to "
                                  "roll back to")  # fmt: skip
            version = self.version(target)
            append_jsonl(self.path / HISTORY, {"at": now_iso(), "action": "rollback",
                         "version": target, "previous": current, "reason": reason})  # fmt: skip
            self._point(target)
        return version

    @contextlib.contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        """A short lock around each change of ``current`` (promote, rollback): two at once
        would each read the same "previous" and record a history that never happened."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".pointer.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # waits: a pointer change takes milliseconds
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the bot's round lock (``.lock``, an OS file lock: released if the process
        dies); ConfigError at once if another round holds it."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another learning round of {self.name!r} is running ({self.path / '.lock'})"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _point(self, number: int) -> None:
        tmp = self.path / f".{CURRENT}.{os.getpid()}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(f"{number}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / CURRENT)


def anchor_base(model_dir: Path, base: str | None) -> str | None:
    """Rewrite a copied run's base model as an absolute path when it is a relative one, in
    its ``chattune.json`` and ``config.yaml``: the registry is used from other folders than
    the one the run was trained in. Embedded model names stay as they are."""
    import yaml

    if not base or not Path(base).exists() or Path(base).is_absolute():
        return base
    absolute = str(Path(base).resolve())
    meta_file = model_dir / "chattune.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    write_json_atomic(meta_file, meta | {"base": absolute})
    config_file = model_dir / "config.yaml"
    if config_file.exists():
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        config.setdefault("model", {})["base"] = absolute
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return absolute


class Registry:
    """A registry folder; each bot in it is a :class:`Bot`."""

    def __init__(self, root: str | Path = DEFAULT_REGISTRY) -> None:
        self.root = Path(root)

    def bot(self, name: str) -> Bot:
        return Bot(self.root, name)

    def bots(self) -> list[Bot]:
        if not self.root.is_dir():
            return []
        return [Bot(self.root, p.name) for p in sorted(self.root.iterdir())
                if p.is_dir() and _BOT_NAME.fullmatch(p.name)]  # fmt: skip
