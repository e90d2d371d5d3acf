"""What the benchmarks share: dropping caches and reporting figures as JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def drop_caches() -> None:
    """Write back and drop the page, dentry and inode caches (root only)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def report(result: dict[str, Any], json_path: Path | None) -> None:
    """Print *result* as JSON, and write it to *json_path* if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n")
