import pytest

from pytest_ollama_cpu.host import is_local, normalize_host, split_host


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        (":8080", "http://127.0.0.1:8080"),
        ("http://example.com/", "http://example.com:11434"),
        ("https://ollama.example.com", "https://ollama.example.com:443"),
        ("http://[::1]:11500", "http://[::1]:11500"),
    ],
)
def test_normalize_host(given, expected):
    assert normalize_host(given) == expected


@pytest.mark.parametrize("bad", ["", "ftp://x", "http://h:notaport"])
def test_bad_hosts(bad):
    with pytest.raises(ValueError):
        normalize_host(bad)


def test_local_or_not():
    assert split_host("http://127.0.0.1:5") == ("127.0.0.1", 5)
    assert is_local("http://127.0.0.1:11434")
    assert is_local("http://localhost:11434")
    assert is_local("http://10.1.2.3:11434", local_addresses={"10.1.2.3"})
    assert not is_local("http://10.1.2.4:11434", local_addresses={"10.1.2.3"})
