"""The store's schema check and lock, and the identity key's creation and checks."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import lmdb
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from realizefs.config import format_key, parse_key
from realizefs.errors import IdentityError, StoreError
from realizefs.peers.identity import KEY_FILE, load_or_create
from realizefs.store.schema import SCHEMA_VERSION, Store


def set_schema(data_dir: Path, version: int) -> None:
    env = lmdb.open(str(data_dir / "store"), max_dbs=16)
    meta = env.open_db(b"meta")  # not inside the write transaction: it takes the write lock too
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", struct.pack(">I", version), db=meta)
    env.close()


def test_store_is_created_once_with_a_stable_id(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert len(store.store_id) == 16
        first = store.store_id
    with Store(tmp_path) as store:
        assert store.store_id == first


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    set_schema(tmp_path, SCHEMA_VERSION + 1)
    with pytest.raises(StoreError) as info:
        Store(tmp_path)
    assert "newer realizefs" in str(info.value) and str(SCHEMA_VERSION + 1) in str(info.value)
    # the refused open released everything: the same process can open the store again
    set_schema(tmp_path, SCHEMA_VERSION)
    Store(tmp_path).close()


def test_one_daemon_per_data_dir(tmp_path: Path) -> None:
    with Store(tmp_path):
        with pytest.raises(StoreError) as info:
            Store(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value)
    Store(tmp_path).close()


def test_identity_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    assert len(first.public_key) == 32
    assert os.stat(tmp_path / KEY_FILE).st_mode & 0o777 == 0o600
    assert load_or_create(tmp_path).public_key == first.public_key
    assert parse_key(format_key(first.public_key)) == first.public_key
    assert not (tmp_path / (KEY_FILE + ".tmp")).exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, mode)
    with pytest.raises(IdentityError) as info:
        load_or_create(tmp_path)
    assert "chmod 600" in str(info.value) and str(tmp_path / KEY_FILE) in str(info.value)


def test_a_key_of_another_kind_or_garbage_is_refused(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / KEY_FILE
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="Ed25519"):
        load_or_create(tmp_path)
    path.write_bytes(b"not a key")
    with pytest.raises(IdentityError, match="not a valid private key"):
        load_or_create(tmp_path)
