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
    policy = TrimPolicy(step=8 * MiB)
    assert not policy.due(3 * MiB)  # the first look is the baseline
    assert not policy.due(10 * MiB)  # 7 MiB freed: not yet
    assert policy.due(11 * MiB)
    policy.trimmed(11 * MiB)  # trimmed pages stay counted as free
    assert not policy.due(11 * MiB)
    assert not policy.due(2 * MiB)  # memory taken again: the baseline follows it down
    assert policy.due(10 * MiB)  # 8 MiB freed since
    policy.trimmed(10 * MiB)
    assert not policy.due(17 * MiB)


@pytest.mark.skipif(not LIBC.usable, reason="glibc's malloc_trim and mallinfo2 only")
def test_a_trim_gives_freed_small_objects_back_to_the_system() -> None:
    """Under the daemon's allocator settings, 400,000 small objects freed but one in a
    hundred, the survivors spread over the whole heap: a trim returns most of its pages."""
    script = textwrap.dedent(
        """
        from realizefs.memory import LIBC, TrimPolicy, anonymous_bytes
        policy = TrimPolicy()
        policy.due(LIBC.free_bytes())
        objects = [bytes(200) for _ in range(400_000)]
        objects = objects[::100]  # about one survivor every six pages
        before = anonymous_bytes()
        assert policy.due(LIBC.free_bytes())
        LIBC.trim()
        print(before - anonymous_bytes())
        """
    )
    env = {**os.environ, "PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    assert int(out.stdout) > 30 * MiB  # of about 90 MB freed
