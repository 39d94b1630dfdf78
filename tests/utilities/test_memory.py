"""``kits_plugins.utilities.memory``: freed memory goes back to the operating system (glibc)."""

from __future__ import annotations


def test_return_freed_memory_to_os():
    import platform

    from kits_plugins.utilities.memory import return_freed_memory_to_os

    result = return_freed_memory_to_os()
    assert isinstance(result, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert result
