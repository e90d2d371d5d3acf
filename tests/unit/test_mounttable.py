"""Reading the kernel's mount table."""

from __future__ import annotations

from pathlib import Path

from realizefs.mounttable import Mount, mounted_on, parse_mountinfo

TABLE = b"""\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
45 22 0:40 / /tmp/with\\040space/mnt rw,nosuid shared:7 master:2 - fuse.realizefs realizefs rw
46 45 0:41 / /tmp/with\\040space/mnt rw,relatime - tmpfs elsewhere rw,size=1024k
47 22 0:42 / /srv/back\\134slash rw - fuse.sshfs host:/x rw
a line the format does not know
"""


def test_the_top_mount_of_a_path_is_the_last_listed() -> None:
    table = parse_mountinfo(TABLE)
    assert mounted_on(Path("/tmp/with space/mnt"), table) == Mount(
        b"/tmp/with space/mnt", "tmpfs", "elsewhere", (0, 41)
    )
    assert mounted_on(Path("/srv/back\\slash"), table) == Mount(
        b"/srv/back\\slash", "fuse.sshfs", "host:/x", (0, 42)
    )
    assert mounted_on(Path("/tmp"), table) is None


def test_optional_fields_and_unknown_lines_are_skipped() -> None:
    table = parse_mountinfo(TABLE)
    assert [m.fstype for m in table] == ["ext4", "fuse.realizefs", "tmpfs", "fuse.sshfs"]
    assert table[1] == Mount(b"/tmp/with space/mnt", "fuse.realizefs", "realizefs", (0, 40))
