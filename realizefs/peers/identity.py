"""This peer's Ed25519 identity key in ``data_dir/identity.key``.

Created on first start (PKCS#8 PEM, mode 0600, written to a temporary file,
fsynced and renamed into place so a crash never leaves half a key). A key
file that group or others can read is refused: the key is the peer's whole
identity in the household.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from realizefs.errors import IdentityError

log = logging.getLogger(__name__)

KEY_FILE = "identity.key"


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    public_key: bytes  # the 32 raw bytes


def load_or_create(data_dir: Path) -> Identity:
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot open the identity key: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path}: the identity key is not a regular file")
        if st.st_mode & 0o077:
            raise IdentityError(
                f"{path}: the identity key is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise IdentityError(f"{path}: not a valid private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path}: expected an Ed25519 private key")
    return _identity(key)


def _create(path: Path) -> Identity:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    identity = _identity(key)
    log.info("created identity key %s", path)
    return identity


def _identity(key: Ed25519PrivateKey) -> Identity:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Identity(key, raw)
