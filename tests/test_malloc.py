"""protonet._malloc.tune_malloc: glibc-only, never raises, honours PROTONET_NO_MALLOC_TUNING."""
import platform
import sys

from protonet import _malloc
from protonet._malloc import tune_malloc


def test_tune_malloc_returns_a_bool():
    result = tune_malloc()
    assert isinstance(result, bool)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert result is True


def test_tune_malloc_honours_the_env_var(monkeypatch):
    monkeypatch.setenv("PROTONET_NO_MALLOC_TUNING", "1")
    assert tune_malloc() is False
    monkeypatch.setenv("PROTONET_NO_MALLOC_TUNING", "0")
    assert isinstance(tune_malloc(), bool)


def test_tune_malloc_never_raises(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no libc")
    monkeypatch.delenv("PROTONET_NO_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(_malloc.platform, "libc_ver", broken)
    assert tune_malloc() is False
    monkeypatch.setattr(_malloc.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert tune_malloc() is False


def test_tune_malloc_off_linux_does_nothing(monkeypatch):
    monkeypatch.delenv("PROTONET_NO_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(_malloc.sys, "platform", "darwin")
    assert tune_malloc() is False
