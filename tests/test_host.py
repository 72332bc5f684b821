from __future__ import annotations

import json
import socket

import pytest

from pytest_ollama_cpu.host import (
    Credentials,
    is_local,
    mask_password,
    normalize_host,
    parse_host,
    split_host,
)
from pytest_ollama_cpu.options import resolve_settings

from .conftest import run_fake
from .fake_ollama import Behaviour, FakeOllama


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("localhost:", "http://localhost:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        (":8080", "http://127.0.0.1:8080"),
        # a scheme brings its own port, as Ollama and its Python client read OLLAMA_HOST
        ("http://example.com/", "http://example.com:80"),
        ("https://ollama.example.com", "https://ollama.example.com:443"),
        ("HTTP://Example.com:8000", "http://example.com:8000"),
        ("http://[::1]:11500", "http://[::1]:11500"),
        ("[::1]:11500", "http://[::1]:11500"),
        ("[::1]", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),
        # a reverse proxy's base path is kept: requests go to /ollama/api/...
        ("http://localhost:11434/ollama/", "http://localhost:11434/ollama"),
        ("proxy.example.com:8080/llm/ollama", "http://proxy.example.com:8080/llm/ollama"),
    ],
)
def test_normalize_host(given: str, expected: str) -> None:
    assert normalize_host(given) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "it is empty; give host:port, [IPv6]:port or a URL such as http://host:11434"),
        ("   ", "it is empty"),
        ("file:///etc/passwd", "only http:// and https:// reach an Ollama server, not file://"),
        ("ftp://x", "only http:// and https:// reach an Ollama server, not ftp://"),
        ("http://h:notaport", "its port is not a number from 1 to 65535"),
        ("localhost:99999", "its port is not a number from 1 to 65535"),
        ("localhost:-1", "its port is not a number from 1 to 65535"),
        ("localhost:0", "port 0 cannot be connected to"),
        ("http://h:1/x?model=a", "a server address has no ?query or #fragment"),
        ("http://h:1#top", "a server address has no ?query or #fragment"),
        ("http://local host:1", "'local host' is not a host name or IP address"),
        ("http://[::1", "it is not an address (Invalid IPv6 URL)"),
    ],
)
def test_bad_hosts_say_what_is_wrong(bad: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_host(bad)
    assert message in str(info.value)


def test_credentials_are_kept_out_of_the_url() -> None:
    host = parse_host("http://me:s3cret@proxy.example.com:8080/ollama")
    assert host.url == "http://proxy.example.com:8080/ollama"
    assert host.credentials == Credentials("me", "s3cret")
    assert host.credentials.auth == ("me", "s3cret")
    assert host.shown == "http://me:***@proxy.example.com:8080/ollama"
    assert "s3cret" not in repr(host)
    # percent-encoded as URLs need them, sent decoded
    encoded = parse_host("me%40corp:p%3Ass@h:1")
    assert encoded.url == "http://h:1"
    assert encoded.credentials == Credentials("me@corp", "p:ss")
    assert encoded.shown == "http://me%40corp:***@h:1"
    assert parse_host("http://me@h:1").shown == "http://me@h:1"
    assert parse_host("h:1").credentials is None


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://me:s3cret@h:99999", "http://me:***@h:99999"),
        ("me:s3cret@h:x", "me:***@h:x"),
        ("http://me:pa/ss@h:1", "http://me:***@h:1"),  # an unencoded / breaks the URL apart
        ("http://me:a@b@h:1", "http://me:***@h:1"),
        ("http://me@h:1", "http://me@h:1"),
        ("http://h:1", "http://h:1"),
    ],
)
def test_mask_password(text: str, masked: str) -> None:
    assert mask_password(text) == masked


def test_local_or_not():
    assert split_host("http://127.0.0.1:5") == ("127.0.0.1", 5)
    assert is_local("http://127.0.0.1:11434")
    assert is_local("http://localhost:11434")
    assert is_local("http://[::1]:11434")
    assert is_local("http://10.1.2.3:11434", local_addresses={"10.1.2.3"})
    assert not is_local("http://10.1.2.4:11434", local_addresses={"10.1.2.3"})


# -- in a run -----------------------------------------------------------------------------

SWEEP = """
import pytest

@pytest.mark.threads(1, 2, rounds=1)
def test_sweep(ollama_cpu):
    ollama_cpu.generate("x", num_predict=8)
"""


def _everything_written(pytester: pytest.Pytester, result: pytest.RunResult) -> str:
    """The run's terminal output and every file it left, as one text to search."""
    written = [
        path.read_text(errors="replace")
        for path in pytester.path.rglob("*")
        if path.is_file() and path.suffix in (".json", ".md")
    ]
    return "\n".join([result.stdout.str(), result.stderr.str(), *written])


def test_a_password_in_the_host_is_sent_but_never_shown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SWEEP)
    with FakeOllama(Behaviour(auth="me:s3cret")) as fake:
        url = f"http://me:s3cret@127.0.0.1:{fake.port}"
        result = run_fake(
            pytester,
            None,
            f"--ollama-cpu-host={url}",
            "--ollama-cpu-json=samples.json",
            "--ollama-cpu-compare",
            "--ollama-cpu-save=first",
            "--ollama-cpu-compare-markdown=summary.md",
        )
        # the fake answers 401 without the right credentials: these were sent
        result.assert_outcomes(passed=1)
        assert f"ollama-cpu: host http://me:***@127.0.0.1:{fake.port}, " in result.stdout.str()
        assert "s3cret" not in _everything_written(pytester, result)
        data = json.loads((pytester.path / "samples.json").read_text())
        assert data["settings"]["host"] == fake.host

        # from OLLAMA_HOST, and a wrong one: the failure names the server, not the password
        monkeypatch.setenv("OLLAMA_HOST", f"me:wr0ng@127.0.0.1:{fake.port}")
        wrong = run_fake(pytester, None, "-p", "no:cacheprovider")
        wrong.assert_outcomes(failed=1)
        wrong.stdout.fnmatch_lines(
            [
                f"*http://127.0.0.1:{fake.port} refused the user and password given (HTTP 401): "
                "give them in the host's URL, http://USER:PASSWORD@host:port, with "
                "--ollama-cpu-host or OLLAMA_HOST*"
            ]
        )
        assert "wr0ng" not in _everything_written(pytester, wrong)
        assert f"ollama-cpu: host http://me:***@127.0.0.1:{fake.port}, " in wrong.stdout.str()

    # nothing listening there any more
    gone = run_fake(pytester, None, f"--ollama-cpu-host={url}")
    gone.assert_outcomes(failed=1)
    gone.stdout.fnmatch_lines([f"*no Ollama server answered at http://127.0.0.1:{fake.port}*"])
    # a value that cannot be read is shown, masked, in the error
    bad = run_fake(pytester, None, "--ollama-cpu-host=http://me:s3cret@127.0.0.1:99999")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "ERROR: --ollama-cpu-host: 'http://me:***@127.0.0.1:99999' (from the command line) "
        "is not valid: its port is not a number from 1 to 65535"
    ) in bad.stderr.str()
    for output in (gone, bad):
        assert "s3cret" not in _everything_written(pytester, output)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_host_without_a_scheme(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP)
    with FakeOllama(Behaviour(), address="::1") as fake:
        result = run_fake(pytester, None, f"--ollama-cpu-host=[::1]:{fake.port}")
    result.assert_outcomes(passed=1)
    # reached, and found on this machine: its CPU use is measured
    result.stdout.fnmatch_lines(
        [f"ollama-cpu: host http://[[]::1]:{fake.port}, *", "ollama-cpu: Ollama *; server pid *"]
    )


def test_a_server_under_a_proxy_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SWEEP)
    with FakeOllama(Behaviour(base_path="/ollama")) as fake:
        result = run_fake(pytester, None, f"--ollama-cpu-host={fake.host}/ollama/")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"ollama-cpu: host {fake.host}/ollama, *"])
        assert {r["model"] for r in fake.behaviour.requests} == {"tiny"}
        assert len(fake.behaviour.requests) == 4


CLI, ENV = "the command line", "environment variable OLLAMA_HOST"


@pytest.mark.parametrize(
    ("value", "message", "source"),
    [
        (
            "file:///etc/passwd",
            "'file:///etc/passwd' (from {source}) is not valid: only http:// and https:// "
            "reach an Ollama server, not file://; give host:port or a URL such as "
            "http://host:11434",
            source,
        )
        for source in (CLI, ENV)
    ]
    + [
        ("localhost:70000", "*its port is not a number from 1 to 65535*", source)
        for source in (CLI, ENV)
    ]
    # an empty OLLAMA_HOST means the default, as it does for Ollama
    + [("  ", "'  ' (from {source}) is not valid: it is empty; give host:port*", CLI)],
)
def test_a_bad_host_stops_the_run_before_it_starts(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    message: str,
    source: str,
) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    if source == CLI:
        result = pytester.runpytest(f"--ollama-cpu-host={value}")
    else:
        monkeypatch.setenv("OLLAMA_HOST", value)
        result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --ollama-cpu-host: {message.format(source=source)}"])


def test_an_empty_ollama_host_means_the_default(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    settings = resolve_settings(config.getoption, config.getini, {"OLLAMA_HOST": " "})
    assert settings.host == "http://127.0.0.1:11434"
    settings = resolve_settings(config.getoption, config.getini, {"OLLAMA_HOST": "localhost"})
    assert settings.host == "http://localhost:11434"
