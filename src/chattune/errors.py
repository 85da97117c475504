"""Errors a user can act on.

Every error chattune raises for bad input says *what* is wrong, *where* (``file:line``, a
config field or a flag) and, where it is not obvious, *how to fix it*. The CLI prints these
without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ChattuneError(Exception):
    """Base class for errors caused by the user's input, printed without a traceback."""


class ConfigError(ChattuneError):
    """A configuration value, YAML file or command-line flag is invalid."""


class ModelError(ChattuneError):
    """A model could not be found or loaded."""


class DataError(ChattuneError):
    """One or more problems in data files, all reported at once.

    Args:
        problems: one line per problem, each already prefixed with ``FILE:LINE:``.
        limit: how many problems to show before summarising the rest.

    Example:
        >>> str(DataError(["a.jsonl:3: missing content"]))
        'a.jsonl:3: missing content'
    """

    def __init__(self, problems: list[str], limit: int = 20) -> None:
        self.problems = list(problems)
        shown = self.problems[:limit]
        if len(self.problems) > limit:
            shown.append(f"... and {len(self.problems) - limit} more problems")
        super().__init__("\n".join(shown))
