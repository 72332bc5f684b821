"""Many machines, for real: the suite run on two hosts over ``ssh``, as the README's
"Many machines" command runs it, each worker measuring its own genuine Ollama.

The hosts are this machine, reached through a private OpenSSH server (Debian's
``openssh-server``; ``.ci/run`` installs it as root) on a free loopback port, with a
throwaway host key and user key of its own; nothing of the system's ssh setup is read
or changed (``/run/sshd``, sshd's privilege separation folder, is made when it is
missing and this is root). Each host's worker is pointed at its own embedded server,
confined to its own CPU, with ``//env:OLLAMA_HOST=``. Skipped, with the reason, where
there is no sshd or it cannot start or let us log in; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ollama_cpu.embedded import MODEL_NAME, EmbeddedServer, free_port
from pytest_ollama_cpu.locking import LOCK_DIR_ENV, lock_dir

from .conftest import assert_one_section_per_server

SBIN = os.pathsep.join(("/usr/sbin", "/usr/local/sbin", "/sbin", os.environ.get("PATH", "")))
SSHD = shutil.which("sshd", path=SBIN)
SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        None in (SSHD, SSH, SSH_KEYGEN),
        reason="no OpenSSH server and client (sshd, ssh, ssh-keygen) to run workers over ssh: "
        "install Debian's openssh-server (apt-get install openssh-server; .ci/run does) "
        "to run this test",
    ),
]

#: Seconds sshd may take to listen, and an ssh command to log in and finish.
START_TIMEOUT = 10
LOGIN_TIMEOUT = 30
#: Seconds the whole pytest run over ssh may take (two short sweeps; more when another
#: sweep on this machine holds the CPUs, as the locks make them take turns).
RUN_TIMEOUT = 300

#: The hosts' names in the ssh client's config: both are 127.0.0.1 on sshd's port.
HOSTS = ("host-a", "host-b")

#: The suite each host runs; it notes beside itself which server its host measured.
SUITE = """
import os
from pathlib import Path

import pytest

@pytest.mark.threads("auto", rounds=2)
def test_generation(ollama_cpu):
    ollama_cpu.generate("Explain what a CPU cache is.", num_predict=16)
    assert ollama_cpu.threads == [1]  # each server has one CPU
    Path(__file__).with_name("measured").write_text(os.environ["OLLAMA_HOST"])
"""


@dataclasses.dataclass
class Sshd:
    """A running private sshd and the ssh client config that reaches it."""

    process: subprocess.Popen[bytes]
    config: Path  # for ``ssh -F``: the port, the key, no host key checks
    log: Path
    user: str

    def spec(self, host: str, *keys: str) -> str:
        """An execnet ``--tx`` spec for a worker on ``host`` through this sshd, run by
        this test's Python (the plugin is installed in it), with ``keys`` added."""
        return "//".join(
            (f"ssh_config={self.config}", f"ssh={self.user}@{host}", f"python={sys.executable}")
            + keys
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def logins(self) -> int:
        return self.log_text().count("Accepted publickey for ")

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop sshd and the connections' processes it keeps in its process group (its own:
    start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _keygen(path: Path) -> None:
    assert SSH_KEYGEN is not None
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "pytest-ollama-cpu", "-f", str(path)],
        check=True,
        timeout=LOGIN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def _sshd_config(folder: Path, port: int, user: str) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1:{port}
HostKey {folder / "host_key"}
PidFile {folder / "sshd.pid"}
AuthorizedKeysFile {folder / "authorized_keys"}
AllowUsers {user}
AuthenticationMethods publickey
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
PermitTTY no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PrintMotd no
PrintLastLog no
"""
    )
    return config


def _client_config(folder: Path, port: int) -> Path:
    config = folder / "ssh_config"
    config.write_text(
        f"""\
Host {" ".join(HOSTS)}
    HostName 127.0.0.1
    Port {port}
    IdentityFile {folder / "user_key"}
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    BatchMode yes
    ConnectTimeout 10
    ServerAliveInterval 10
    ServerAliveCountMax 3
    LogLevel ERROR
"""
    )
    return config


def _listening(log: Path, port: int) -> bool:
    """Whether sshd says it listens (read from its log: a probe would be a connection)."""
    return f"Server listening on 127.0.0.1 port {port}." in log.read_text(errors="replace")


def _start_sshd(folder: Path, user: str) -> Sshd:
    """sshd on a free loopback port; a port taken meanwhile is tried again."""
    assert SSHD is not None
    for _ in range(3):
        port = free_port()
        log = folder / f"sshd-{port}.log"
        with open(log, "ab") as output:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(_sshd_config(folder, port, user))],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _listening(log, port):
                return Sshd(process, _client_config(folder, port), log, user)
            time.sleep(0.1)
        status = process.poll()
        _stop(process)
        text = log.read_text(errors="replace")
        if "Address already in use" not in text:
            break
    how = (
        f"did not listen within {START_TIMEOUT}s"
        if status is None
        else f"exited with status {status} at start-up"
    )
    pytest.skip(f"sshd ({SSHD}) {how}; its log ends:\n{text[-2000:] or '(nothing)'}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A private sshd on the loopback that lets this user in with a throwaway key."""
    folder = tmp_path_factory.mktemp("sshd")
    user = pwd.getpwuid(os.getuid()).pw_name
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    if os.geteuid() == 0:
        # as root sshd needs its (empty) privilege separation folder; a system sshd's
        # service makes it at start-up, and none ran here
        try:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            pytest.skip(f"sshd cannot run as root without /run/sshd: {exc}")
    server = _start_sshd(folder, user)
    try:
        assert SSH is not None
        try:
            login = subprocess.run(
                [SSH, "-F", str(server.config), f"{user}@{HOSTS[0]}", "true"],
                capture_output=True,
                text=True,
                timeout=LOGIN_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            failed = f"exit status {login.returncode}: {login.stderr.strip()}"
        except subprocess.TimeoutExpired:
            login, failed = None, f"no answer within {LOGIN_TIMEOUT}s"
        if login is None or login.returncode != 0:
            pytest.skip(
                f"ssh to the private sshd failed ({failed}); sshd's log ends:\n"
                f"{server.log_text()[-2000:]}"
            )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def two_servers(embedded_ollama: EmbeddedServer) -> Iterator[list[EmbeddedServer]]:
    """Two more embedded servers, each confined to one CPU of its own (two "hosts")."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    servers = [EmbeddedServer(embedded_ollama.installation, cpus=[cpu]) for cpu in cpus[:2]]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _worker_keys(server: EmbeddedServer, home: Path) -> tuple[str, ...]:
    """What a worker over ssh needs beside its host: ssh passes on none of this test's
    environment, so its server and the CPU locks this session's sweeps share are named;
    ``chdir``: where on the "host" the worker runs (and rsync copies to), instead of
    the user's ``~/pyexecnetcache``."""
    return (
        f"chdir={home}",
        f"env:OLLAMA_HOST=127.0.0.1:{server.port}",  # no scheme: execnet splits at '//'
        f"env:{LOCK_DIR_ENV}={lock_dir()}",
    )


def test_the_readmes_command_runs_the_suite_on_two_hosts_over_ssh(
    pytester: pytest.Pytester, sshd: Sshd, two_servers: list[EmbeddedServer]
) -> None:
    """The README's command: ``--rsyncdir`` copies tests/ to each host, whose worker
    runs tests/perf there; its paths absolute, without symlinks (pytest-xdist 3.8
    stops at a relative one: "arg tests not relative to an rsync root")."""
    here = pytester.path.resolve()
    suite = here / "tests" / "perf"
    suite.mkdir(parents=True)
    (suite / "test_perf.py").write_text(SUITE)
    homes = [here / f"home-{host}" for host in HOSTS]
    out = here / "fleet.json"
    logins = sshd.logins()
    result = pytester.runpytest_subprocess(
        "--ollama-cpu",
        f"--ollama-cpu-model={MODEL_NAME}",
        "--dist",
        "each",
        *(
            f"--tx={sshd.spec(host, *_worker_keys(server, home))}"
            for host, server, home in zip(HOSTS, two_servers, homes, strict=True)
        ),
        "--rsyncdir",
        str(here / "tests"),
        str(suite),
        f"--ollama-cpu-json={out}",
        timeout=RUN_TIMEOUT,
    )
    print(sshd.log_text())  # shown when the test fails
    assert_one_section_per_server(result, two_servers, out)
    assert sshd.logins() - logins == 2  # a worker per host, each through sshd
    # the suite was copied to each host and run there, against that host's server
    for home, server in zip(homes, two_servers, strict=True):
        assert (home / "tests" / "perf" / "test_perf.py").read_text() == SUITE
        assert (home / "tests" / "perf" / "measured").read_text() == f"127.0.0.1:{server.port}"
    assert not (suite / "measured").exists()


def test_a_suite_already_on_each_host_runs_there_with_its_ini_file(
    pytester: pytest.Pytester, sshd: Sshd, two_servers: list[EmbeddedServer]
) -> None:
    """The README's way without rsync (deprecated in pytest-xdist): each host has a
    checkout, ``//chdir=`` names it, and its worker collects there with the host's
    ini file (here the model and the paths come from it alone), not this one."""
    here = pytester.path.resolve()
    homes = [here / f"checkout-{host}" for host in HOSTS]
    for home in homes:
        (home / "tests" / "perf").mkdir(parents=True)
        (home / "tests" / "perf" / "test_perf.py").write_text(SUITE)
        (home / "pytest.ini").write_text(
            f"[pytest]\ntestpaths = tests/perf\nollama_cpu_model = {MODEL_NAME}\n"
        )
    out = here / "fleet.json"
    logins = sshd.logins()
    result = pytester.runpytest_subprocess(
        "--ollama-cpu",
        "--dist=each",
        *(
            f"--tx={sshd.spec(host, *_worker_keys(server, home))}"
            for host, server, home in zip(HOSTS, two_servers, homes, strict=True)
        ),
        f"--ollama-cpu-json={out}",
        timeout=RUN_TIMEOUT,
    )
    print(sshd.log_text())  # shown when the test fails
    assert_one_section_per_server(result, two_servers, out)
    assert sshd.logins() - logins == 2
    for home, server in zip(homes, two_servers, strict=True):
        assert (home / "tests" / "perf" / "measured").read_text() == f"127.0.0.1:{server.port}"
    result.stdout.no_fnmatch_line("*rsync*")  # no deprecation warning: nothing copied
