"""Domain errors shared by every layer.

The model raises these; only `realizefs.ops.errno_map` turns them into errno
values for the kernel. The backing-tree module (`realizefs.real.backing`) is the
one place that turns `OSError` into them, keeping the original errno so that an
operation fails exactly as it would have on the backing filesystem.
"""

from __future__ import annotations

import errno as _errno


class RealizeError(Exception):
    """Base of every error realizefs raises on purpose."""


class ConfigError(RealizeError):
    """The configuration file is unusable; the message names the file and the key."""


class StoreError(RealizeError):
    """The data directory or its database cannot be used (locked, newer schema, ...)."""


class IdentityError(RealizeError):
    """The peer's identity key is missing, unreadable or unsafely readable by others."""


class ProtocolError(RealizeError):
    """A peer sent something the protocol does not allow; its connection is closed."""


class PeerRefused(RealizeError):
    """A connection was refused before it carried anything: authentication or version."""


class ConnectionLost(RealizeError):
    """The connection to a peer ended before the answer to a request arrived."""


class RemoteError(RealizeError):
    """A peer answered a request with an error: *code* is for programs, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FsError(RealizeError):
    """A filesystem operation failed; carries the errno the caller should see."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class NotFound(FsError):
    errno = _errno.ENOENT


class Exists(FsError):
    errno = _errno.EEXIST


class NotEmpty(FsError):
    errno = _errno.ENOTEMPTY


class NotPermitted(FsError):
    """The operation is refused by realizefs itself (EPERM), not by permissions."""

    errno = _errno.EPERM


class AccessDenied(FsError):
    errno = _errno.EACCES


class InvalidValue(FsError):
    errno = _errno.EINVAL


class NoData(FsError):
    """An extended attribute is not set."""

    errno = _errno.ENODATA


class Stale(FsError):
    """The inode no longer names the object it was looked up as: the kernel looks the name up again."""

    errno = _errno.ESTALE


class NotSupported(FsError):
    errno = _errno.EOPNOTSUPP


def from_oserror(exc: OSError) -> FsError:
    """Wrap an OSError from the backing filesystem, keeping its errno."""
    code = exc.errno if exc.errno is not None else _errno.EIO
    cls: type[FsError] = {
        _errno.ENOENT: NotFound,
        _errno.EEXIST: Exists,
        _errno.ENOTEMPTY: NotEmpty,
        _errno.EPERM: NotPermitted,
        _errno.EACCES: AccessDenied,
        _errno.EINVAL: InvalidValue,
        _errno.ENODATA: NoData,
        _errno.EOPNOTSUPP: NotSupported,
    }.get(code, FsError)
    return cls(exc.strerror or "", errno=code)
