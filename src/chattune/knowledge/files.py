"""Which files ``kb add`` reads, and how the report names them.

Folders are searched recursively in sorted order; hidden files and unsupported types are
skipped with a warning each, and so is a symbolic link that leads out of the added folder
(it would publish whatever it points at to everyone who can chat with the bot).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chattune.knowledge.documents import FORMATS
from chattune.knowledge.index import KnowledgeError

log = logging.getLogger(__name__)


@dataclass
class AddReport:
    added: list[tuple[str, int]] = field(default_factory=list)
    replaced: list[tuple[str, int]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def files_to_add(paths: Iterable[str | Path], report: AddReport) -> Iterator[Path]:
    """Files to add: named files, and supported files under named folders (sorted)."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            root = path.resolve()
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(p.startswith(".") for p in child.parts):
                    if not child.resolve().is_relative_to(root):
                        # A link out of the folder would publish whatever it points at
                        # (a key, a password file) to everyone who can chat with the bot.
                        why = f"symbolic link to {child.resolve()}, outside {given}"
                        report.skipped.append((f"{display_name(child.parent)}/{child.name}", why))
                        log.warning("skipped %s: %s", child, why)
                    elif child.suffix.lower() in FORMATS:
                        yield child
                    else:
                        report.skipped.append(
                            (display_name(child), f"unsupported file type {child.suffix!r}")
                        )
                        log.warning("skipped %s: unsupported file type", child)
        elif path.is_file():
            yield path
        else:
            raise KnowledgeError(f"{given}: no such file or folder")


def display_name(path: Path) -> str:
    """The path relative to the working folder when it is inside it, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)
