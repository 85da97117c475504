"""Generation on a remote OpenAI-compatible server: vLLM, llama.cpp's server, TGI, chattune.

The chat engine stays here: the profile, the history budget, knowledge, the store and
feedback are chattune's, and the prompt is rendered by the local tokenizer's chat template.
What crosses the network is only what a :class:`~chattune.backends.base.Backend` gets, the
prompt as token ids, sent to the server's **``/v1/completions``** (not chat completions: the
server must continue *this* prompt, not render its own template around the messages).

``prompt_format``:

- ``"ids"`` (default): the token ids themselves, exact. vLLM, llama.cpp's server and
  chattune accept a list of ids as ``prompt``.
- ``"text"``: ``tokenizer.decode(ids)`` with the special tokens written out, for servers
  that take only strings (TGI). The server tokenizes that text again, which is not always
  the same ids (a tokenizer may split the text differently, or add a BOS token in front of
  the template's own BOS); prefer ``"ids"`` where the server takes them.

Options (:func:`completion_arguments`): ``max_new_tokens`` is ``max_tokens``; greedy is
``temperature: 0``; sampling sends ``temperature``, ``top_p`` and ``seed``; ``top_k``,
``repetition_penalty`` and the end-of-turn ids (``stop_token_ids``) go in the request body
under vLLM's names, which servers that do not know them ignore. At most 4 stop strings are
sent (OpenAI's limit); the engine cuts the reply at every one of its stop strings anyway.

A stream stops at the next chunk (a token, from vLLM or chattune) once ``cancel`` is set:
leaving the response closes the connection, and the server abandons the generation. A server
that sends nothing for ``token_timeout`` seconds raises
:class:`~chattune.backends.base.BackendTimeout`; every other failure (unreachable server,
HTTP error, error event or malformed stream) is a :class:`BackendError` naming the URL.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import openai

from chattune.backends.base import BackendError, BackendTimeout
from chattune.model.generation import Generated, GenerationOptions

#: Requests ``generate`` keeps in flight at once (one per prompt).
MAX_IN_FLIGHT = 8
#: OpenAI's limit on stop strings, and chattune's on their length.
MAX_STOP, MAX_STOP_CHARS = 4, 64


def base_url(url: str) -> str:
    """The API root, ending in ``/v1``, whichever way the URL was written.

    Example:
        >>> base_url("http://127.0.0.1:8001/"), base_url("http://gpu-box/v1/")
        ('http://127.0.0.1:8001/v1', 'http://gpu-box/v1')
    """
    root = url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise BackendError(f"backend URL {url!r} must start with http:// or https://")
    return root if root.endswith("/v1") else f"{root}/v1"


def completion_arguments(
    options: GenerationOptions, stop: list[str], end_ids: list[int]
) -> dict[str, Any]:
    """``completions.create`` arguments for ``options``: OpenAI's names where OpenAI has
    the option, vLLM's in ``extra_body`` where it has not.

    Example:
        >>> completion_arguments(GenerationOptions(max_new_tokens=8), [], [2])
        {'max_tokens': 8, 'temperature': 0.0, 'extra_body': {'repetition_penalty': 1.0, \
'stop_token_ids': [2]}}
    """
    args: dict[str, Any] = {"max_tokens": options.max_new_tokens}
    extra: dict[str, Any] = {
        "repetition_penalty": options.repetition_penalty,  # applies to greedy decoding too
        "stop_token_ids": list(end_ids),
    }
    if options.do_sample:
        args.update(temperature=options.temperature, top_p=options.top_p, seed=options.seed)
        # top_k 0 is "off": not sent, since older vLLM versions refuse 0 (their "off" is -1,
        # which chattune refuses); off is vLLM's default, while llama.cpp's defaults to 40.
        if options.top_k > 0:
            extra["top_k"] = options.top_k
    else:
        args["temperature"] = 0.0
    sent = [s for s in stop if 1 <= len(s) <= MAX_STOP_CHARS][:MAX_STOP]
    if sent:
        args["stop"] = sent
    return {**args, "extra_body": extra}


class OpenAIBackend:
    """A :class:`~chattune.backends.base.Backend` on a remote server's ``/v1/completions``.

    Args:
        tokenizer: the model's tokenizer: the engine renders prompts with its chat template,
            and ``prompt_format="text"`` decodes them with it.
        url: the server, with or without the trailing ``/v1``.
        model: the served model's name; None asks ``/v1/models`` once and takes the first.
        api_key: sent as ``Authorization: Bearer``. Only this key is ever sent: never
            ``OPENAI_API_KEY`` from the environment.
        context_window, end_ids: the model's, as the engine budgets and stops by them.
        prompt_format: ``"ids"`` (exact) or ``"text"`` (see the module's notes).
        token_timeout: seconds without a byte from the server before :class:`BackendTimeout`.
    """

    name = "openai"

    def __init__(
        self,
        tokenizer: Any,
        url: str,
        *,
        model: str | None = None,
        api_key: str = "",
        context_window: int,
        end_ids: list[int],
        prompt_format: Literal["ids", "text"] = "ids",
        token_timeout: float = 120.0,
    ) -> None:
        if prompt_format not in ("ids", "text"):
            raise BackendError(f"prompt_format must be 'ids' or 'text', not {prompt_format!r}")
        self.tokenizer, self.url = tokenizer, base_url(url)
        self.context_window, self.end_ids = int(context_window), [int(i) for i in end_ids]
        self.prompt_format, self.token_timeout = prompt_format, token_timeout
        # A key is always given (a placeholder without one), so the client never falls back
        # to OPENAI_API_KEY and sends the user's OpenAI key to this server.
        self.client = openai.OpenAI(
            base_url=self.url,
            api_key=api_key or "EMPTY",
            max_retries=0,  # a failure is reported at once; the caller decides what to retry
            timeout=openai.Timeout(token_timeout, connect=min(token_timeout, 10.0)),
        )
        self.model_name = model or self._first_model()

    def _first_model(self) -> str:
        with self._failures("listing its models"):
            names = [m.id for m in self.client.models.list()]
        if not names:
            raise BackendError(f"{self.url}/models lists no model; name one (--backend-model)")
        return names[0]

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        """The reply's text as the server streams it; ends at the next chunk after ``cancel``."""
        # closing(): a consumer that stops early (the engine at a stop string) closes the
        # response now, not whenever the generator is collected
        with contextlib.closing(
            self._chunks(self._prompt(prompt_ids), options, stop, cancel)
        ) as chunks:
            for text, _, _ in chunks:
                if text:
                    yield text

    def close(self) -> None:
        """Close the HTTP connections to the server."""
        self.client.close()

    def generate(
        self, prompts: list[list[int]], options: GenerationOptions, stop: list[str]
    ) -> list[Generated]:
        """Whole replies, one request per prompt, at most ``MAX_IN_FLIGHT`` at once (the
        server batches them). The first failure is raised, and stops the others."""
        if not prompts:
            return []
        sent = [self._prompt(p) for p in prompts]
        failed = threading.Event()

        def one(prompt: list[int] | str) -> tuple[str, str | None, int | None]:
            try:
                return self._whole(prompt, options, stop, failed)
            except BaseException:
                failed.set()  # the other requests end at their next chunk
                raise

        with ThreadPoolExecutor(min(MAX_IN_FLIGHT, len(sent))) as pool:
            replies = list(pool.map(one, sent))
        # Servers that report no usage: count by tokenizing again, here in one thread (a
        # fast tokenizer used from several threads at once can fail with "Already borrowed").
        return [
            Generated(text, finish == "stop", n if n is not None else self._count(text))
            for text, finish, n in replies
        ]

    def _whole(
        self,
        prompt: list[int] | str,
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> tuple[str, str | None, int | None]:
        """(text, finish reason, completion tokens if the server counted them)."""
        parts, finish, used = [], None, None
        for text, reason, tokens in self._chunks(prompt, options, stop, cancel, usage=True):
            parts.append(text)
            finish, used = reason or finish, tokens if tokens is not None else used
        return "".join(parts), finish, used

    def _chunks(
        self,
        prompt: list[int] | str,
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
        usage: bool = False,
    ) -> Iterator[tuple[str, str | None, int | None]]:
        """(text, finish reason, completion tokens) for each chunk the server streams.

        Leaving the ``with`` block, on ``cancel`` or when the consumer stops early, closes
        the response: the server sees the client go and stops generating.
        """
        if cancel.is_set():
            return
        args = completion_arguments(options, stop, self.end_ids)
        if usage:  # vLLM counts tokens in a stream only when asked (chattune always does)
            args["stream_options"] = {"include_usage": True}
        finished = False
        with self._failures("generating"):
            request = dict(model=self.model_name, prompt=prompt, stream=True, **args)
            with self.client.completions.create(**request) as chunks:
                kind = chunks.response.headers.get("content-type", "")
                if not kind.startswith("text/event-stream"):
                    raise BackendError(f"{self.url} answered {kind!r}, not an event stream")
                for chunk in chunks:
                    if cancel.is_set():
                        return
                    text, reason, tokens = self._read(chunk)
                    finished = finished or reason is not None
                    yield text, reason, tokens
        if not finished:  # every complete stream ends with a finish_reason
            raise BackendError(f"{self.url} ended the stream before the reply's end")

    def _read(self, chunk: Any) -> tuple[str, str | None, int | None]:
        """(text, finish reason, completion tokens) of one chunk; a usage-only chunk (no
        choices) has no text."""
        choices = getattr(chunk, "choices", None)
        if not isinstance(choices, list):
            raise BackendError(f"{self.url} sent a chunk without choices: {chunk!r:.200}")
        text = getattr(choices[0], "text", None) if choices else ""
        if not isinstance(text, str):
            raise BackendError(f"{self.url} sent a choice without text: {chunk!r:.200}")
        reason = getattr(choices[0], "finish_reason", None) if choices else None
        tokens = getattr(getattr(chunk, "usage", None), "completion_tokens", None)
        return text, reason, tokens if isinstance(tokens, int) else None

    def _prompt(self, prompt_ids: list[int]) -> list[int] | str:
        if self.prompt_format == "ids":
            return list(prompt_ids)
        return self.tokenizer.decode(prompt_ids, skip_special_tokens=False)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @contextlib.contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """Every way a request can fail, as a :class:`BackendError` that names the server."""
        try:
            yield
        except openai.APITimeoutError as e:
            raise BackendTimeout(
                f"{self.url} sent nothing for {self.token_timeout:g} s while {doing}; abandoned"
            ) from e
        except openai.APIConnectionError as e:
            why = e.__cause__ or e
            raise BackendError(f"cannot reach {self.url} ({why}); is the server running?") from e
        except openai.APIStatusError as e:
            raise BackendError(
                f"{self.url} answered HTTP {e.status_code} while {doing}: {_message(e)}"
            ) from e
        except openai.APIError as e:  # an error event in the stream
            raise BackendError(f"{self.url} failed while {doing}: {e.message}") from e
        except ValueError as e:  # an event that is not JSON
            raise BackendError(f"{self.url} sent a malformed stream: {e}") from e
        except Exception as e:
            # older openai versions let the transport's own errors out of a stream
            if type(e).__module__.partition(".")[0] not in ("httpx", "httpx2", "httpcore"):
                raise
            if "Timeout" in type(e).__name__:
                raise BackendTimeout(
                    f"{self.url} sent nothing for {self.token_timeout:g} s; abandoned"
                ) from e
            raise BackendError(f"the connection to {self.url} failed: {e!r}") from e


def _message(error: openai.APIStatusError) -> str:
    """The server's own words: OpenAI's (and chattune's) ``error.message``, vLLM's
    ``message``, or the body as text."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return error.message
