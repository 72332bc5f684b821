"""A small fake Ollama HTTP server for faults the real one won't produce on cue.

It answers /api/version, /api/tags, /api/generate and /api/chat with made-up
but well-formed timings; ``behaviour`` switches on failures: a missing model,
a server that dies after N measured requests, a request that hangs, and
``fault`` (from request ``fault_after`` + 1 on) a reply that goes wrong in one
of the ``FAULTS`` ways.
"""

from __future__ import annotations

import base64
import json
import math
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: How a reply can go wrong (``Behaviour.fault``):
#: ``error``: HTTP 500 with Ollama's error body; ``missing_fields``: a reply without
#: the fields in ``missing``; ``malformed``: a cut-off JSON body; ``stall``: the
#: headers and part of the body, then nothing; ``trickle``: the headers, then one
#: byte at a time forever; ``huge``: a reply of ``huge_bytes`` (its length in the
#: headers if ``huge_declared``, else ended by closing the connection).
FAULTS = ("error", "missing_fields", "malformed", "stall", "trickle", "huge", "cut_stream")

#: The longest a faulty reply keeps a handler thread busy, whatever the client does.
FAULT_SECONDS = 120.0


@dataclass
class Behaviour:
    models: tuple[str, ...] = ("tiny:latest",)
    # generation rate per thread count: tokens/s = base * threads ** exponent
    base_rate: float = 20.0
    exponent: float = 0.8
    die_after: int | None = None  # close the socket on request number N+1
    hang_seconds: float = 0.0
    error_status: int | None = None
    stop_after: int | None = None  # replies end (done_reason "stop") after N tokens
    short_on: tuple[int, ...] = ()  # request numbers (1-based) whose reply ends after 1 token
    #: request numbers (1-based) whose streamed reply Ollama's runaway guard stops: a
    #: few token pieces, then 31 white-space ones, and the end without the done piece
    repeat_on: tuple[int, ...] = ()
    reload_on: tuple[int, ...] = ()  # request numbers (1-based) whose reply carries a load
    jitter: float = 0.0  # sd of log throughput between requests
    fault: str | None = None  # one of FAULTS
    fault_after: int = 0  # requests answered well before the fault
    missing: tuple[str, ...] = ("eval_count", "eval_duration")  # left out by missing_fields
    huge_bytes: int = 100 * 2**20
    huge_declared: bool = False
    #: bytes of the faulty reply the fake managed to send (a client that stops
    #: reading early leaves this far below what it meant to send)
    fault_bytes_sent: int = 0
    seed: int = 0
    auth: str | None = None  # "user:password" every request must carry as basic auth
    base_path: str = ""  # served under this path, as behind a reverse proxy
    requests: list[dict[str, Any]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _admitted(self) -> bool:
        """Check the credentials and strip the base path; reply as a proxy would if not."""
        b = self.server.behaviour
        if b.auth is not None:
            expected = "Basic " + base64.b64encode(b.auth.encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._reply(401, {"error": "unauthorized"})
                return False
        if b.base_path:
            if not self.path.startswith(b.base_path + "/"):
                self._reply(404, {"error": "not found"})
                return False
            self.path = self.path[len(b.base_path) :]
        return True

    def do_GET(self) -> None:
        b = self.server.behaviour
        if not self._admitted():
            return
        if self.path == "/api/version":
            self._reply(200, {"version": "0.0.0-fake"})
        elif self.path == "/fake/requests":
            self._reply(200, {"requests": b.requests})
        elif self.path == "/api/tags":
            models = [
                {
                    "name": m,
                    "model": m,
                    "digest": "f" * 64,
                    "size": 1000,
                    "details": {
                        "family": "fake",
                        "parameter_size": "1M",
                        "quantization_level": "Q4",
                    },
                }
                for m in b.models
            ]
            self._reply(200, {"models": models})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        b = self.server.behaviour
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self._admitted():
            return
        if self.path not in ("/api/generate", "/api/chat"):
            self._reply(404, {"error": "not found"})
            return
        name = body.get("model", "")
        if name not in b.models and f"{name}:latest" not in b.models:
            self._reply(404, {"error": f"model '{name}' not found"})
            return
        if b.die_after is not None and len(b.requests) >= b.die_after:
            # like a crashed server: no reply at all
            self.close_connection = True
            self.connection.shutdown(2)
            return
        b.requests.append(body)
        if b.error_status is not None:
            self._reply(b.error_status, {"error": "llama runner process has terminated"})
            return
        if b.hang_seconds:
            threading.Event().wait(b.hang_seconds)
        options = body.get("options", {})
        threads = int(options.get("num_thread", 1))
        asked = int(options.get("num_predict", 16))
        count = asked if b.stop_after is None else min(asked, b.stop_after)
        if len(b.requests) in b.short_on:
            count = 1
        rate = b.base_rate * threads**b.exponent
        if b.jitter:
            rate *= math.exp(self.server.rng.gauss(0.0, b.jitter))
        reply = {
            "model": name,
            "done": True,
            "total_duration": int(count / rate * 1e9) + 1_000_000,
            "load_duration": 800_000_000 if len(b.requests) in b.reload_on else 500_000,
            "prompt_eval_count": 8,
            "prompt_eval_duration": 4_000_000,
            "eval_count": count,
            "eval_duration": int(count / rate * 1e9),
            "done_reason": "length" if count == asked else "stop",
        }
        if self.path == "/api/chat":
            reply["message"] = {"role": "assistant", "content": "ok"}
        else:
            reply["response"] = "ok"
        if b.fault is not None and len(b.requests) > b.fault_after:
            self._faulty_reply(b, reply)
            return
        if len(b.requests) in b.repeat_on and body.get("stream", True):
            self._repeat_guarded(reply)
            return
        self._reply(200, reply)

    def _repeat_guarded(self, reply: dict[str, Any]) -> None:
        """As Ollama's Completion returns when a token's trimmed text came 31 times in
        a row: every piece sent so far, HTTP 200, and no done piece."""
        key = "message" if "message" in reply else "response"
        # 31 pieces in a row whose text, trimmed, is the same (nothing)
        texts = ["One", " answer", ":", "\n\n", "\n", " "] + ["\n"] * 28
        pieces = [
            {
                "model": reply["model"],
                "done": False,
                key: {"role": "assistant", "content": text} if key == "message" else text,
            }
            for text in texts
        ]
        data = b"".join(json.dumps(piece).encode() + b"\n" for piece in pieces)
        self._send_headers(len(data))
        self.wfile.write(data)

    def _faulty_reply(self, b: Behaviour, reply: dict[str, Any]) -> None:
        if b.fault == "error":
            self._reply(500, {"error": "llama runner process has terminated: signal: killed"})
        elif b.fault == "missing_fields":
            self._reply(200, {k: v for k, v in reply.items() if k not in b.missing})
        elif b.fault == "cut_stream":
            # a streamed reply's token pieces, and then the end of the body without the
            # last piece (done, with the timings)
            pieces = [{"model": reply["model"], "done": False, "response": "ok"}] * 3
            data = b"".join(json.dumps(piece).encode() + b"\n" for piece in pieces)
            self._send_headers(len(data))
            self._send(b, data)
        elif b.fault == "malformed":
            data = json.dumps(reply).encode()[:40]
            self._send_headers(len(data))
            self._send(b, data)
        elif b.fault == "stall":
            data = json.dumps(reply).encode()
            self._send_headers(len(data))
            self._send(b, data[:20])
            threading.Event().wait(FAULT_SECONDS)
        elif b.fault == "trickle":
            data = json.dumps(reply).encode()
            self._send_headers(len(data) + 10**6)
            ends = time.monotonic() + FAULT_SECONDS
            while time.monotonic() < ends and self._send(b, b" "):
                time.sleep(0.05)
        elif b.fault == "huge":
            # a well-formed reply whose text is huge: what a runaway server might send
            head = json.dumps(reply)[:-1].encode() + b', "text": "'
            tail = b'"}'
            self._send_headers(len(head) + b.huge_bytes + len(tail) if b.huge_declared else None)
            if not self._send(b, head):
                return
            chunk, left = b"a" * 2**20, b.huge_bytes
            while left > 0:
                if not self._send(b, chunk[: min(left, len(chunk))]):
                    return
                left -= len(chunk)
            self._send(b, tail)
        else:
            raise ValueError(f"unknown fault {b.fault!r}: one of {', '.join(FAULTS)}")

    def _send_headers(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()

    def _send(self, b: Behaviour, data: bytes) -> bool:
        """Send ``data`` at once; False when the client has gone."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return False
        b.fault_bytes_sent += len(data)
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    rng: random.Random


class _Server6(_Server):
    address_family = socket.AF_INET6


class FakeOllama:
    def __init__(self, behaviour: Behaviour | None = None, address: str = "127.0.0.1") -> None:
        self.behaviour = behaviour or Behaviour()
        self._server = (_Server6 if ":" in address else _Server)((address, 0), _Handler)
        self._server.behaviour = self.behaviour
        self._server.rng = random.Random(self.behaviour.seed)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        address, port = self._server.server_address[:2]
        assert isinstance(address, str)  # what getsockname gives for AF_INET and AF_INET6
        return f"http://{f'[{address}]' if ':' in address else address}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class SpawnedFakeOllama:
    """The fake in a process of its own, so its CPU time is not the test's process tree."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        import dataclasses

        self._config = json.dumps(dataclasses.asdict(behaviour or Behaviour()))
        self._process: subprocess.Popen[str] | None = None
        self.host = ""

    def __enter__(self) -> SpawnedFakeOllama:
        self._process = subprocess.Popen(
            [sys.executable, __file__, self._config], stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        self.host = self._process.stdout.readline().strip()
        return self

    @property
    def requests(self) -> list[dict[str, Any]]:
        import urllib.request

        with urllib.request.urlopen(f"{self.host}/fake/requests") as reply:
            return list(json.loads(reply.read())["requests"])

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    config["models"] = tuple(config["models"])
    config["reload_on"] = tuple(config["reload_on"])
    config["repeat_on"] = tuple(config["repeat_on"])
    config["missing"] = tuple(config["missing"])
    fake = FakeOllama(Behaviour(**config))
    fake._thread.start()
    print(fake.host, flush=True)
    threading.Event().wait()
