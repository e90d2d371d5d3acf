"""When the daemon gives freed heap back (`TrimPolicy`), and that the C library really does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from realizefs.memory import LIBC, TrimPolicy

MiB = 1 << 20


def test_a_trim_is_due_once_the_free_bytes_grew_by_a_step_since_the_last() -> None:
    policy = TrimPolicy(step=8 * MiB, lazy=60.0)
    assert not policy.due(3 * MiB, 0.0)  # the first look is the baseline
    assert not policy.due(10 * MiB, 1.0)  # 7 MiB freed: not yet
    assert policy.due(11 * MiB, 2.0)
    policy.trimmed(11 * MiB, 2.0)  # trimmed pages stay counted as free
    assert not policy.due(11 * MiB, 3.0)
    assert not policy.due(2 * MiB, 4.0)  # memory taken again: the baseline follows it down
    assert policy.due(10 * MiB, 5.0)  # 8 MiB freed since
    policy.trimmed(10 * MiB, 5.0)
    assert not policy.due(17 * MiB, 6.0)


def test_less_is_trimmed_once_the_last_trim_is_old() -> None:
    policy = TrimPolicy(step=8 * MiB, lazy=60.0)
    policy.trimmed(10 * MiB, 100.0)
    assert not policy.due(13 * MiB, 159.0)  # 3 MiB freed, the last trim 59 s ago
    assert policy.due(13 * MiB, 160.0)
    policy.trimmed(13 * MiB, 160.0)
    assert not policy.due(13 * MiB + MiB // 2, 1000.0)  # under a MiB: never worth it


@pytest.mark.skipif(not LIBC.usable, reason="glibc's malloc_trim and mallinfo2 only")
def test_a_trim_gives_freed_small_objects_back_to_the_system() -> None:
    """Under the daemon's allocator settings, 400,000 small objects freed but one in a
    hundred, the survivors spread over the whole heap: a trim returns most of its pages."""
    script = textwrap.dedent(
        """
        from realizefs.memory import LIBC, TrimPolicy, anonymous_bytes
        policy = TrimPolicy()
        policy.due(LIBC.free_bytes(), 0.0)
        objects = [bytes(200) for _ in range(400_000)]
        objects = objects[::100]  # about one survivor every six pages
        before = anonymous_bytes()
        assert policy.due(LIBC.free_bytes(), 1.0)
        LIBC.trim()
        print(before - anonymous_bytes())
        """
    )
    env = {**os.environ, "PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    assert int(out.stdout) > 30 * MiB  # of about 90 MB freed
