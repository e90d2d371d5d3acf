"""Small value types shared across layers: realize modes and peer addresses."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.Enum):
    """Whether a path is kept locally (REAL) or only listed and fetched on demand (UNREAL)."""

    REAL = "real"
    UNREAL = "unreal"

    @classmethod
    def parse(cls, text: str) -> Mode | None:
        """The mode named by *text*, or None if it names none."""
        try:
            return cls(text)
        except ValueError:
            return None


@dataclass(frozen=True)
class Address:
    """A TCP endpoint as written in the config: ``host:port`` or ``[v6]:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
