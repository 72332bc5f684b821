"""Talking to the Ollama server: requests, timings and errors a person can act on.

The official ``ollama`` client does the requests; ``/api/version`` has no client
method, so it goes through httpx. Every failure becomes an ``OllamaCpuError``
subclass whose message says what happened and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import ollama


class OllamaCpuError(Exception):
    """Base of the plugin's errors; the message is meant for the person running pytest."""


class ServerUnreachable(OllamaCpuError):
    pass


class ModelNotFound(OllamaCpuError):
    pass


class RequestTimedOut(OllamaCpuError):
    pass


class ServerFailed(OllamaCpuError):
    pass


@dataclass(frozen=True)
class Timings:
    """One reply's own timings, durations in seconds (Ollama reports nanoseconds)."""

    total_duration: float
    load_duration: float
    prompt_eval_count: int
    prompt_eval_duration: float
    eval_count: int
    eval_duration: float

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
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timings:
        return cls(**{f: data[f] for f in cls.__dataclass_fields__})


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


class OllamaClient:
    def __init__(self, host: str, timeout: float, auth: tuple[str, str] | None = None) -> None:
        self.host = host  # never with a password: it is in messages
        self.timeout = timeout
        self._auth = auth  # HTTP basic auth, for a server behind a proxy that asks for it
        self._client = ollama.Client(host=host, timeout=timeout, auth=auth)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    # -- server facts -------------------------------------------------------

    def version(self) -> str:
        try:
            reply = httpx.get(
                f"{self.host}/api/version", timeout=min(self.timeout, 10.0), auth=self._auth
            )
            reply.raise_for_status()
            return str(reply.json()["version"])
        except httpx.TimeoutException:
            raise ServerUnreachable(self._unreachable("it did not answer in time")) from None
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

    # -- the measured requests ---------------------------------------------

    def generate(
        self, model: str, prompt: str, options: Mapping[str, Any], keep_alive: str | None = None
    ) -> Timings:
        reply = self._call(
            lambda: self._client.generate(
                model=model, prompt=prompt, options=dict(options), keep_alive=keep_alive
            ),
            what=f"generating with {model}",
            model=model,
        )
        return Timings.from_reply(reply.model_dump())

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
        keep_alive: str | None = None,
    ) -> Timings:
        reply = self._call(
            lambda: self._client.chat(
                model=model,
                messages=[dict(m) for m in messages],
                options=dict(options),
                keep_alive=keep_alive,
            ),
            what=f"chatting with {model}",
            model=model,
        )
        return Timings.from_reply(reply.model_dump())

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
                f"{exc.error} (HTTP {exc.status_code}). Its log says more."
            ) from None
        except httpx.TimeoutException:
            raise RequestTimedOut(
                f"the Ollama server at {self.host} took longer than {self.timeout:g}s while "
                f"{what}. Raise --ollama-cpu-timeout, lower --ollama-cpu-num-predict, or "
                "check the server is not stuck."
            ) from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise ServerUnreachable(
                f"lost the Ollama server at {self.host} while {what} ({exc}): it stopped or "
                "crashed. Check its log, restart it and run again."
            ) from None
