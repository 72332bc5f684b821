"""Talking to the Ollama server: requests, timings and errors a person can act on.

The official ``ollama`` client does the requests; ``/api/version`` has no client
method, so it goes through httpx. Every failure becomes an ``OllamaCpuError``
subclass whose message says what happened and what to do about it.

httpx's timeouts are per network operation: a server that sends a byte now and
then is never timed out by them, and nothing bounds the size of a reply. So each
request gets a deadline (``timeout`` from its start, the body included) and a
size limit, checked as the body arrives (``_Limits``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import httpx
import ollama

from .errors import OllamaCpuError

#: The two APIs a sweep's requests go to: ``/api/generate`` and ``/api/chat``.
RequestKind = Literal["generate", "chat"]
REQUEST_KINDS: tuple[RequestKind, ...] = get_args(RequestKind)


def request_kind(value: object) -> RequestKind:
    """``value`` as a request kind (read from a file); ``ValueError`` if it is none."""
    for kind in REQUEST_KINDS:
        if value == kind:
            return kind
    raise ValueError(f"{value!r} is not a request kind ({', '.join(REQUEST_KINDS)})")


#: The most a reply may hold. A sweep's replies are a few kilobytes (the text of
#: num_predict tokens, and for generate the context's token ids: about 7 bytes a
#: token); more than this is not Ollama answering, and is not read into memory.
MAX_REPLY_BYTES = 16 * 2**20


class ServerUnreachable(OllamaCpuError):
    pass


class ModelNotFound(OllamaCpuError):
    pass


class RequestTimedOut(OllamaCpuError):
    pass


class ServerFailed(OllamaCpuError):
    pass


class BadReply(OllamaCpuError):
    """The server answered with something that is not a finished Ollama reply."""


class ReplyTooLarge(OllamaCpuError):
    pass


#: Ollama guards against a runaway model (0.5.4's ``llm/server.go``, ``Completion``;
#: ``llm/llama_server.go`` in 0.30 and later): when a token's text, trimmed of white
#: space, comes more than 30 times in a row, it returns ``ctx.Err()``, which is nil,
#: so the reply ends with HTTP 200 and no last piece (done, with the timings). Every
#: white-space token counts as the same text, so a model that writes blank lines trips
#: it. (Ollama's commit 4a1adcc, August 2026, ends such a reply as done with
#: done_reason "repeat" instead.) So a streamed reply that ends without its last piece
#: after this many pieces of one text in a row was stopped by that guard.
REPEAT_GUARD_PIECES = 31


class RepeatStopped(BadReply):
    """The server's runaway guard ended a reply whose token repeated: no timings came.
    What the model writes depends on the prompt, so asking again with another first
    line (the sampler does) usually gets a finished reply."""


@dataclass(frozen=True)
class Timings:
    """One reply's own timings, durations in seconds (Ollama reports nanoseconds)."""

    total_duration: float
    load_duration: float
    prompt_eval_count: int
    prompt_eval_duration: float
    eval_count: int
    eval_duration: float
    #: why generation ended: "length" (num_predict reached), "stop" (the model
    #: ended its answer, or a stop sequence matched); None when not reported
    done_reason: str | None = None

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> Timings:
        def seconds(key: str) -> float:
            return float(reply.get(key) or 0) / 1e9

        return cls(
            total_duration=seconds("total_duration"),
            load_duration=seconds("load_duration"),
            prompt_eval_count=int(reply.get("prompt_eval_count") or 0),
            prompt_eval_duration=seconds("prompt_eval_duration"),
            eval_count=int(reply.get("eval_count") or 0),
            eval_duration=seconds("eval_duration"),
            done_reason=_text_or_none(reply.get("done_reason")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timings:
        # files saved before done_reason was recorded lack it
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class ModelFacts:
    name: str
    digest: str | None
    size: int | None
    family: str | None
    parameter_size: str | None
    quantization: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFacts:
        return cls(**{f: data.get(f) for f in cls.__dataclass_fields__})  # type: ignore[arg-type]


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"

    return norm(a) == norm(b)


class _OverLimit(Exception):
    """A reply's body passed MAX_REPLY_BYTES (``declared``: as its headers said)."""

    def __init__(self, declared: bool) -> None:
        super().__init__()
        self.declared = declared


class _Limits:
    """An httpx response hook that bounds the body of the request under way.

    ``start`` sets the deadline before each request. Once the headers are in,
    the body is read through ``_BoundedBody``, which stops at the deadline or at
    MAX_REPLY_BYTES; a reply that announces more is refused unread.
    """

    def __init__(self) -> None:
        self.deadline = float("inf")

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def __call__(self, response: httpx.Response) -> None:
        if time.monotonic() >= self.deadline:
            raise httpx.ReadTimeout("no reply before the deadline", request=response.request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
            raise _OverLimit(declared=True)
        body = response.stream
        assert isinstance(body, httpx.SyncByteStream)
        response.stream = _BoundedBody(body, self.deadline, _socket_of(response))


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # another transport's stream: the deadline is checked per chunk
        return None
    return sock if isinstance(sock, socket.socket) else None


class _BoundedBody(httpx.SyncByteStream):
    """A reply's body, read until the deadline and MAX_REPLY_BYTES. A read that
    blocks is cut by a timer that shuts the connection's socket at the deadline:
    httpx would wait ``timeout`` again for every read."""

    def __init__(
        self, body: httpx.SyncByteStream, deadline: float, sock: socket.socket | None
    ) -> None:
        self._body = body
        self._deadline = deadline
        self._socket = sock
        self._cut = threading.Event()
        self._timer: threading.Timer | None = None

    def _cut_off(self) -> None:
        self._cut.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):  # already closed: the read has ended
                self._socket.shutdown(socket.SHUT_RDWR)

    def __iter__(self) -> Iterator[bytes]:
        timer = threading.Timer(max(0.0, self._deadline - time.monotonic()), self._cut_off)
        timer.daemon = True
        timer.start()
        self._timer = timer
        received = 0
        try:
            for chunk in self._body:
                received += len(chunk)
                if received > MAX_REPLY_BYTES:
                    raise _OverLimit(declared=False)
                if time.monotonic() >= self._deadline:
                    raise httpx.ReadTimeout("the reply did not end before the deadline")
                yield chunk
        except httpx.TransportError:
            if self._cut.is_set():
                raise httpx.ReadTimeout("the reply did not end before the deadline") from None
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._body.close()


class OllamaClient:
    def __init__(self, host: str, timeout: float, auth: tuple[str, str] | None = None) -> None:
        self.host = host  # never with a password: it is in messages
        self.timeout = timeout
        self._limits = _Limits()
        hooks: dict[str, list[Callable[..., Any]]] = {"response": [self._limits]}
        self._auth = auth  # HTTP basic auth, for a server behind a proxy that asks for it
        self._client = ollama.Client(host=host, timeout=timeout, event_hooks=hooks, auth=auth)
        self._http = httpx.Client(timeout=min(timeout, 10.0), event_hooks=hooks, auth=auth)

    def close(self) -> None:
        # ollama.Client has close() from 0.6.2 on; before that (0.4 to 0.6.1, which the
        # package allows) only the httpx client it wraps can be closed
        close = getattr(self._client, "close", None)
        if close is None:
            close = self._client._client.close
        close()
        self._http.close()

    # -- server facts -------------------------------------------------------

    def version(self) -> str:
        try:
            self._limits.start(min(self.timeout, 10.0))
            reply = self._http.get(f"{self.host}/api/version")
            reply.raise_for_status()
            return str(reply.json()["version"])
        except httpx.TimeoutException:
            raise ServerUnreachable(self._unreachable("it did not answer in time")) from None
        except _OverLimit:
            raise ServerUnreachable(
                f"{self.host} answered /api/version with more than {_mib(MAX_REPLY_BYTES)}, "
                "which is not Ollama's reply; check --ollama-cpu-host points at an Ollama server"
            ) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status not in (401, 403):
                raise ServerUnreachable(self._unreachable(str(exc))) from None
            what = "refused the user and password given" if self._auth else "asks for a login"
            raise ServerUnreachable(
                f"{self.host} {what} (HTTP {status}): give them in the host's URL, "
                "http://USER:PASSWORD@host:port, with --ollama-cpu-host or OLLAMA_HOST"
            ) from None
        except httpx.HTTPError as exc:
            raise ServerUnreachable(self._unreachable(str(exc) or type(exc).__name__)) from None
        except (ValueError, KeyError):
            raise ServerUnreachable(
                f"{self.host} answered /api/version with something that is not Ollama's reply; "
                "check --ollama-cpu-host points at an Ollama server"
            ) from None

    def model_names(self) -> list[str]:
        listing = self._call(lambda: self._client.list(), what="listing models")
        return [m.model or "" for m in listing.models]

    def model_facts(self, model: str) -> ModelFacts:
        listing = self._call(lambda: self._client.list(), what="listing models")
        entry = next((m for m in listing.models if _same_model(m.model or "", model)), None)
        if entry is None:
            raise self._model_not_found(model, [m.model or "" for m in listing.models])
        details = entry.details
        return ModelFacts(
            name=model,
            digest=entry.digest,
            size=None if entry.size is None else int(entry.size),  # not pydantic's ByteSize
            family=details.family if details else None,
            parameter_size=details.parameter_size if details else None,
            quantization=details.quantization_level if details else None,
        )

    def model_info(self, model: str) -> dict[str, Any]:
        """The model's facts from ``/api/show`` (``general.parameter_count``, its
        architecture's block shapes), for the roofline (``roofline.model_cost``)."""
        reply = self._call(lambda: self._client.show(model), what="reading the model's facts")
        info = getattr(reply, "modelinfo", None)
        return dict(info) if isinstance(info, Mapping) else {}

    # -- the measured requests ---------------------------------------------

    def generate(
        self,
        model: str,
        prompt: str,
        options: Mapping[str, Any],
        keep_alive: str | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> Timings:
        """One request's timings. With ``on_first``, the reply is streamed and
        ``on_first`` is called when its first piece (the first token) arrives."""
        what = f"generating with {model}"

        def request(stream: bool) -> Any:
            return self._client.generate(
                model=model,
                prompt=prompt,
                options=dict(options),
                keep_alive=keep_alive,
                stream=stream,  # type: ignore[call-overload]
            )

        reply = self._reply(request, on_first, what, model)
        return Timings.from_reply(self._finished(reply, what))

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
        keep_alive: str | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> Timings:
        what = f"chatting with {model}"

        def request(stream: bool) -> Any:
            return self._client.chat(
                model=model,
                messages=[dict(m) for m in messages],
                options=dict(options),
                keep_alive=keep_alive,
                stream=stream,  # type: ignore[call-overload]
            )

        reply = self._reply(request, on_first, what, model)
        return Timings.from_reply(self._finished(reply, what))

    def _reply(
        self,
        request: Callable[[bool], Any],
        on_first: Callable[[], None] | None,
        what: str,
        model: str,
    ) -> dict[str, Any]:
        """The finished reply as a dict; streamed when ``on_first`` wants the first piece."""
        if on_first is None:
            return dict(self._call(lambda: request(False), what=what, model=model).model_dump())

        pieces = repeats = 0
        repeated = ""

        def streamed() -> Any:
            nonlocal pieces, repeats, repeated
            last = None
            for piece in request(True):
                if last is None:
                    on_first()
                last = piece
                pieces += 1
                text = _piece_text(piece).strip()  # as the guard compares (Go's TrimSpace)
                repeats = repeats + 1 if pieces > 1 and text == repeated else 1
                repeated = text
            return last

        reply = self._call(streamed, what=what, model=model)
        if reply is None:
            raise BadReply(
                f"the Ollama server at {self.host} ended its reply while {what} before "
                "sending anything. Check its log."
            )
        if pieces > 1 and not reply.done:
            # Ollama streams a piece a token and ends with the one that is done and
            # carries the timings: a stream without it was stopped by the server's
            # runaway guard, or cut short; either way not another server
            ending = (
                f"after {pieces} pieces without the last one (done, with the request's timings)"
            )
            if repeats >= REPEAT_GUARD_PIECES:
                token = repr(repeated) if repeated else "white space"
                raise RepeatStopped(
                    f"the Ollama server at {self.host} ended its streamed reply while {what} "
                    f"{ending}: the model wrote the same token ({token}) {repeats} times in a "
                    f"row, and Ollama stops such a reply as a runaway, without its "
                    "timings, so nothing was measured. Use a prompt the model answers "
                    "in prose, or set repeat_penalty in the request's options."
                )
            raise BadReply(
                f"the Ollama server at {self.host} ended its streamed reply while {what} "
                f"{ending}: the connection was cut or the server stopped mid-reply. Check its log."
            )
        return dict(reply.model_dump())

    def _finished(self, reply: dict[str, Any], what: str) -> dict[str, Any]:
        """``reply``, if it is a finished Ollama reply whose timings can be read.

        Ollama leaves out a count or duration that is 0, so a reply without
        eval_count is one that generated nothing (the sampler says so); tokens
        generated in no time, or a reply not done, are not Ollama's.
        """
        missing = [key for key in ("done", "total_duration") if not reply.get(key)]
        if reply.get("eval_count") and not reply.get("eval_duration"):
            missing.append("eval_duration")
        if missing:
            raise BadReply(
                f"the Ollama server at {self.host} replied to {what} without "
                f"{', '.join(missing)}, which every finished Ollama reply carries: it is not "
                "an Ollama server, or one that answers differently. Check --ollama-cpu-host "
                "points at an Ollama server, and its log."
            )
        return reply

    # -- errors -------------------------------------------------------------

    def _unreachable(self, detail: str) -> str:
        return (
            f"no Ollama server answered at {self.host} ({detail}). Start one with "
            "'ollama serve', or point the plugin at yours with --ollama-cpu-host or OLLAMA_HOST "
            "(or use the embedded server: 'pytest-ollama-cpu embedded -- pytest --ollama-cpu')."
        )

    def _model_not_found(self, model: str, available: list[str]) -> ModelNotFound:
        listed = ", ".join(sorted(available)) or "none"
        return ModelNotFound(
            f"model {model!r} is not on the Ollama server at {self.host}: choose one it has "
            f"with --ollama-cpu-model (models there: {listed}), or pull it on that server "
            f"with 'ollama pull {model}'"
        )

    def _call(self, request: Any, *, what: str, model: str | None = None) -> Any:
        try:
            self._limits.start(self.timeout)
            return request()
        except ollama.ResponseError as exc:
            if exc.status_code == 404 and model is not None and "not found" in exc.error:
                try:
                    available = self.model_names()
                except OllamaCpuError:
                    available = []
                raise self._model_not_found(model, available) from None
            raise ServerFailed(
                f"the Ollama server at {self.host} failed while {what}: "
                f"{_shorten(str(exc.error))} (HTTP {exc.status_code}). Its log says more."
            ) from None
        except httpx.TimeoutException:
            raise RequestTimedOut(
                f"the Ollama server at {self.host} took longer than {self.timeout:g}s while "
                f"{what}. Raise --ollama-cpu-timeout, lower --ollama-cpu-num-predict, or "
                "check the server is not stuck."
            ) from None
        except _OverLimit as exc:
            how = "announced a reply larger than that" if exc.declared else "was still sending"
            raise ReplyTooLarge(
                f"the Ollama server at {self.host} sent more than {_mib(MAX_REPLY_BYTES)} while "
                f"{what} ({how}); no Ollama reply to these requests is near that size, so the "
                "plugin stopped reading. Check --ollama-cpu-host points at an Ollama server, "
                "and its log."
            ) from None
        except (ConnectionError, httpx.ConnectError):  # refused (the ollama client's word,
            # or httpx's where a streamed reply is read outside the ollama client's catch)
            raise ServerUnreachable(
                f"lost the Ollama server at {self.host} while {what}: the connection was "
                "refused, nothing listens there any more (the server stopped or crashed). "
                "Check its log, restart it and run again."
            ) from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"lost the Ollama server at {self.host} while {what}: the connection broke "
                f"mid-request ({exc or type(exc).__name__}), the server stopped or crashed. "
                "Check its log, restart it and run again."
            ) from None
        except (ValueError, TypeError) as exc:  # the body is not the JSON object expected
            raise BadReply(
                f"the Ollama server at {self.host} sent a reply that is not Ollama's while "
                f"{what} ({_shorten(str(exc))}). Check --ollama-cpu-host points at an "
                "Ollama server, and its log."
            ) from None


def _piece_text(piece: Any) -> str:
    """The text one streamed piece carries: ``response`` (generate) or the message's
    content (chat)."""
    text = getattr(piece, "response", None)
    if text is None:
        message = getattr(piece, "message", None)
        text = getattr(message, "content", None)
    return text if isinstance(text, str) else ""


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _shorten(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters: an error text may be a whole page."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
