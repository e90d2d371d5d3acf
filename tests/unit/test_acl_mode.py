"""`acl.inherited_mode` gives the mode the kernel gives a new object in a directory with a default ACL.

Checked against the kernel itself: a directory on the test machine's disk gets
each default ACL (``setfacl``), a file is created in it with each mode (umask 0),
and its mode must be what `inherited_mode` says.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from realizefs.real import acl

DEFAULTS = [
    "d:u::rwx,d:g::r-x,d:o::r-x",
    "d:u::rw-,d:u:65533:rwx,d:g::r--,d:m::rw-,d:o::---",
    "d:u::r-x,d:g::rwx,d:g:100:r--,d:m::r--,d:o::rwx",
    "d:u::---,d:g::---,d:o::---",
]
MODES = [0o777, 0o666, 0o640, 0o604, 0o4755, 0o2750, 0o000]


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl (the acl package)")
@pytest.mark.parametrize("default", DEFAULTS)
def test_the_mode_is_what_the_kernel_gives(tmp_path: Path, default: str) -> None:
    subprocess.run(["setfacl", "-m", default, str(tmp_path)], check=True)
    value = os.getxattr(tmp_path, acl.DEFAULT)
    old = os.umask(0)
    try:
        for i, mode in enumerate(MODES):
            fd = os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
            os.close(fd)
    finally:
        os.umask(old)
    for i, mode in enumerate(MODES):
        made = stat.S_IMODE(os.stat(tmp_path / f"f{i}").st_mode) & 0o777
        assert (acl.inherited_mode(value, mode) & 0o777) == made, (default, oct(mode))
    assert (acl.inherited_mode(value, 0o4755) & 0o7000) == 0o4000  # special bits are the mode's


def test_a_malformed_acl_is_refused() -> None:
    with pytest.raises(ValueError):
        acl.inherited_mode(b"\x02\x00\x00\x00\x01", 0o644)
    with pytest.raises(ValueError):
        acl.inherited_mode(b"\x01\x00\x00\x00", 0o644)
    with pytest.raises(ValueError):
        acl.inherited_mode(b"\x02\x00\x00\x00", 0o644)  # no owner, group or other entry
