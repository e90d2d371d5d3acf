"""Whether the process asking may make a device: its own capabilities, as the disk would ask."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from realizefs.ops.fs import may_mknod
from tests.support import NOBODY

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: CAP_MKNOD, and other users")


def waiting(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """A process, set up as *args* make it, that waits for its standard input to close."""
    child = subprocess.Popen(
        [*args, "sh", "-c", "echo ready; exec cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def test_root_may_make_devices() -> None:
    assert may_mknod(os.getpid())


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([], {"user": NOBODY, "group": NOBODY, "extra_groups": []}),  # another user
        (["setpriv", "--bounding-set", "-mknod"], {}),  # root without CAP_MKNOD
    ],
)
def test_a_process_without_cap_mknod_may_not(args: list[str], kwargs: dict[str, Any]) -> None:
    child = waiting(args, **kwargs)
    try:
        assert not may_mknod(child.pid)
    finally:
        child.communicate(b"")
    assert not may_mknod(child.pid)  # exited: nothing to grant
