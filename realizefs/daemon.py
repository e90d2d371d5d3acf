"""The composition root: config -> store and identity -> namespace -> mount -> signals.

`run` is the whole life of the daemon: it validates the config (exit status
2 on a mistake, before anything is mounted), refuses a mountpoint something
live is mounted on (detaching a realizefs mount whose daemon died) before it
creates anything in data_dir, opens the store and the identity (exit status 1
if any of these fails), mounts, tells systemd it is ready once
the mount answers, reloads the config on SIGHUP and unmounts cleanly on
SIGTERM or SIGINT. Nothing imports this module.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from realizefs import __version__, memory, mounttable, systemd
from realizefs import config as config_mod
from realizefs.config import Config
from realizefs.errors import ConfigError, IdentityError, StoreError
from realizefs.ops import dontmask, fallocate
from realizefs.ops.control import Control
from realizefs.ops.fs import Operations
from realizefs.ops.invalidate import KernelCacheSync
from realizefs.peers import identity as identity_mod
from realizefs.peers.household import Household, PeerStatus
from realizefs.peers.messages import Hello
from realizefs.peers.methods import Methods
from realizefs.real.backing import Backing, check_kernel_support
from realizefs.real.indexer import Indexer
from realizefs.real.watcher import Watcher
from realizefs.store.cache import CacheStats, ChunkCache
from realizefs.store.index import Index
from realizefs.store.pruning import Pruning
from realizefs.store.schema import Store
from realizefs.sync.consensus import Consensus, Place
from realizefs.sync.content import Content
from realizefs.sync.lists import FileLists
from realizefs.sync.pruner import Pruner
from realizefs.vfs.merged import MergedTree
from realizefs.vfs.namespace import Namespace
from realizefs.vfs.realtree import RealTree

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
GOODBYE_TIMEOUT = 2.0  # telling connected peers we are leaving
READ_AHEAD_KB = 1024
FSNAME = SUBTYPE = "realizefs"  # the mount table shows fstype fuse.<subtype>, source <fsname>
CORRUPT_CHUNKS = "REALIZEFS_TEST_CORRUPT_CHUNKS"  # a test hook: "1" serves every chunk damaged
PEER_ID_BYTES = 8  # a peer's id in version vectors: the start of its public key
WANTED_FDS = 1 << 20  # the descriptor limit asked for (as root; the kernel's fs.nr_open default)
RESERVED_FDS = 4096  # descriptors kept for open files, peers, the store and the watcher


class Daemon:
    """The running daemon's state, as `NodeView` for the control files."""

    def __init__(
        self, config: Config, store: Store, cache: ChunkCache, identity: identity_mod.Identity
    ) -> None:
        self.config = config
        self.store = store
        self.cache = cache
        self.identity = identity
        self.started = time.time()
        self.index = Index(store, peer_id(identity.public_key))
        self._roots: dict[str, int] = {}  # arena name -> its root's node id (never changes)
        self.indexer = Indexer(self.index, config.consensus.rest, store_id=store.store_id)
        self.control = Control(self, self.indexer)
        self.lists = FileLists(
            self.index,
            lambda: [a.name for a in self.config.arenas],
            peer_id,
            lambda arena, changed: self.cache_sync.peers_changed(arena, (c.told.path for c in changed)),
            bound=lambda: self.config.consensus.history_bound,
        )
        self.pruner = Pruner(
            self.index,
            Pruning(store, self.index),
            lambda: [a.name for a in self.config.arenas],
            lambda: [peer_id(p.key) for p in self.config.peers],
            lambda: self.config.consensus.history_bound,
        )
        self.content = Content(
            self.index,
            self._backing_of,
            cache,
            self.lists.connected,
            corrupt=os.environ.get(CORRUPT_CHUNKS) == "1",
        )
        self.consensus = Consensus(
            self.index,
            self.content,
            self._places,
            self.indexer.expect,
            config.consensus.rest,
            config.consensus.interval,
        )
        self.lists.on_news = self.consensus.news
        self.namespace = Namespace(
            config.arenas,
            self.control.files(),
            self.indexer.hash_of,
            max_pins=_descriptor_budget(),
            tree=lambda arena, backing: MergedTree(
                RealTree(backing),
                self.index,
                arena.name,
                self.content,
                self._peer_name,
                self.indexer.expect,
                self.consensus.progress,
            ),
        )
        self.control.namespace = self.namespace
        self.watcher = Watcher()
        self.cache_sync = KernelCacheSync(self.namespace, self.watcher, self.indexer)
        self.consensus.changed = self.cache_sync.peers_changed
        self.namespace.changed = self.cache_sync.peers_changed
        methods = Methods(*self.lists.served(), *self.content.served())
        self.household = Household(
            identity, self._hello(), config.network, config.peers, methods, chunks=self.content.lane_chunk
        )
        self._serve_arenas()

    def _peer_name(self, peer: bytes) -> str:
        """A peer's name in the config, from its id in version vectors (this peer's: its own)."""
        if peer == self.index.me:
            return self.config.node.name
        for p in self.config.peers:
            if peer_id(p.key) == peer:
                return p.name
        return peer.hex()

    def _backing_of(self, root: int) -> Backing | None:
        """The Real of the arena whose root node in the index is *root* (any thread)."""
        for arena in self.namespace.arenas:
            known = self._roots.get(arena.name)
            if known is None:  # (`arena_root` is a write transaction: not once per chunk served)
                known = self._roots[arena.name] = self.index.arena_root(arena.name)
            if known == root:
                return arena.backing
        return None

    def _places(self) -> list[Place]:
        """The arenas consensus may change: not one whose root lacks its marker (its disk may be
        missing: it is never the source of deletes, nor written to)."""
        return [
            Place(a.name, a.backing, a.config.mode)
            for a in self.namespace.arenas
            if not self.indexer.unmarked(a.name)
        ]

    def consensus_facts(self) -> dict[str, Any]:
        c = self.consensus
        return {
            k: asdict(r) if r is not None else None
            for k, r in (("running", c.running), ("last", c.last), ("last_full", c.last_full))
        }

    def request_consensus(self) -> None:
        self.consensus.request()

    def jobs(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out = []
        for job in self.consensus.jobs.values():
            took = now - job.started if job.started is not None else 0.0
            rate = job.done / took if took > 0 and job.done else None
            eta = (job.total - job.done) / rate if rate else None
            state = "running" if job.started is not None else "queued"
            out.append({**asdict(job), "state": state, "rate": rate, "eta": eta})
        return out

    def _hello(self) -> Hello:
        return Hello(self.config.node.name, self.store.store_id, tuple(a.name for a in self.config.arenas))

    def _serve_arenas(self) -> None:
        """Watch and index the arenas the namespace serves (at start, before the mount answers)."""
        self.cache_sync.watch_arenas()
        self._index_arenas()

    def _index_arenas(self) -> None:
        self.indexer.set_arenas({arena.name: arena.backing for arena in self.namespace.arenas})

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    @property
    def schema_version(self) -> int:
        return self.store.schema_version

    @property
    def store_id(self) -> bytes:
        return self.store.store_id

    def cache_stats(self) -> CacheStats:
        return self.cache.stats()

    def peer_status(self) -> list[PeerStatus]:
        return self.household.status()

    async def peer_lists(self) -> dict[bytes, dict[str, dict[str, Any]]]:
        return await self.lists.report()

    async def reload(self) -> None:
        """Re-read the config file; an invalid one is logged and the running one kept."""
        try:
            # In a worker thread: a path in the new config may lead into our own mount.
            new = await trio.to_thread.run_sync(config_mod.load, self.config.path)
            _check_own_key(new, self.identity.public_key)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        for key in ("name", "data_dir", "mountpoint", "listen"):
            if getattr(new.node, key) != getattr(self.config.node, key):
                log.warning("node.%s changed: restart realizefs to apply it", key)
        # an arena not indexed for want of its root's marker is opened again: its disk may be back
        unmarked = {a.name for a in self.namespace.arenas if self.indexer.unmarked(a.name)}
        for parent, name in self.namespace.set_arenas(new.arenas, reopen=unmarked):
            # in a worker: it may wait on a request only this loop answers; done before we go on
            await trio.to_thread.run_sync(_forget_entry, parent, name)
        self.indexer.rest = self.consensus.rest = new.consensus.rest
        self.consensus.interval = new.consensus.interval
        await self.cache_sync.rewatch()  # a new arena's tree is walked in a worker thread
        self._index_arenas()
        if new.network != self.config.network:
            log.warning("[network] changed: restart realizefs to apply it")
        self.config = replace(new, node=self.config.node, network=self.config.network)
        self.household.hello = self._hello()
        self.household.update(new.peers)
        log.info("config reloaded: %d arenas, %d peers", len(new.arenas), len(new.peers))
        _status(self)


def peer_id(key: bytes) -> bytes:
    """A peer's id in version vectors: the start of its public key."""
    return key[:PEER_ID_BYTES]


def _forget_entry(parent: int, name: bytes) -> None:
    """Make the kernel forget an arena's entry (what it does not hold is no error)."""
    try:
        pyfuse3.invalidate_entry(parent, name)
    except OSError as exc:
        log.debug("cannot invalidate %r: %s", name, exc)


def _descriptor_budget() -> int:
    """Raise the descriptor limit as far as allowed; how many the namespace may pin.

    The namespace holds one descriptor per inode the kernel references (see
    `realizefs.vfs.namespace`); `RESERVED_FDS` are left for open files, peers,
    the store and the watcher."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(hard, WANTED_FDS), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        except (OSError, ValueError):
            continue
        soft = limit
        break
    budget = max(0, soft - RESERVED_FDS)
    log.debug("descriptor limit %d: up to %d inodes pinned", soft, budget)
    return budget


def _check_own_key(config: Config, public_key: bytes) -> None:
    for i, peer in enumerate(config.peers, 1):
        if peer.key == public_key:
            raise ConfigError(f"{config.path}: peer[{i}].key: that is this node's own key")


def _status(daemon: Daemon) -> None:
    config = daemon.config
    systemd.notify(f"STATUS=serving {len(config.arenas)} arenas on {config.node.mountpoint}")


def _mount_options() -> set[str]:
    options = {f"fsname={FSNAME}", f"subtype={SUBTYPE}", "default_permissions"}
    if os.geteuid() == 0 or _user_allow_other():
        options.add("allow_other")  # the mount serves every local user
    return options


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def _lock_mountpoint(mountpoint: Path) -> None:
    """Take the mountpoint for this process's life (see `mounttable.lock`)."""
    try:
        mounttable.lock(mountpoint)  # released by the kernel when the process ends
    except mounttable.Taken as taken:
        holder = f" (pid {taken})" if str(taken) else ""
        raise OSError(
            errno.EBUSY,
            f"{mountpoint} is already a mount point: another realizefs{holder} runs there; stop it "
            f"(if it is stuck: kill it, and fusermount3 -u {mountpoint} if the mount stays)",
        ) from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot lock {mountpoint} for this daemon: {exc.strerror}") from None


def _clear_dead_mount(mountpoint: Path) -> None:
    """Detach a realizefs mount whose daemon is gone; refuse a live one or anything else mounted there."""
    path = mounttable.canonical(mountpoint)
    try:
        mount = mounttable.mounted_on(path, mounttable.parse_mountinfo(mounttable.MOUNTINFO.read_bytes()))
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot read the mount table {mounttable.MOUNTINFO}: {exc.strerror}"
        ) from None
    if mount is None:
        return
    if mount.fstype != f"fuse.{SUBTYPE}":
        raise OSError(
            errno.EBUSY,
            f"{mountpoint} is already a mount point ({mount.fstype} from {mount.source}); "
            "unmount it or choose another node.mountpoint",
        )
    err = mounttable.probe(path)
    if err == errno.ETIMEDOUT:
        raise OSError(
            errno.EBUSY,
            f"{mountpoint} is already a mount point: a realizefs there does not answer "
            f"within {mounttable.PROBE_TIMEOUT:.0f} s; stop it, or unmount with: fusermount3 -u {mountpoint}",
        )
    if not mounttable.is_dead(err):
        raise OSError(
            errno.EBUSY, f"{mountpoint} is already a mount point: a running realizefs answers there"
        )
    mounttable.detach(path)
    log.warning("detached a dead mount on %s (device %d:%d) left by an earlier run", mountpoint, *mount.dev)


def _raise_read_ahead(dev: int) -> None:
    """Let the kernel read ahead 1 MiB on the mount (device *dev*)."""
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(f"{READ_AHEAD_KB}\n")
    except OSError as exc:
        log.info("cannot raise read-ahead (%s): %s", path, exc.strerror)


async def _listen(daemon: Daemon) -> list[trio.SocketListener]:
    address = daemon.config.node.listen
    if address is None:
        return []
    try:
        listeners = await daemon.household.listen(address)
    except OSError as exc:
        raise OSError(exc.errno, f"node.listen: cannot listen on {address}: {exc.strerror or exc}") from None
    log.info("listening for peers on %s", address)
    return listeners


async def _serve(daemon: Daemon) -> None:
    mountpoint = daemon.config.node.mountpoint
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        listeners = await _listen(daemon)
        pyfuse3.init(Operations(daemon.namespace), str(mountpoint), _mount_options())
        dontmask.install()  # with ACLs, the umask is the daemon's to apply: see the module
        fallocate.install(daemon.namespace)  # pyfuse3 has no fallocate handler: see the module
        try:
            # The FUSE loop runs outside the services' nursery: the services (and the worker
            # threads they wait for, which may wait on a request only this loop answers) end
            # first, the loop after them, and the session is closed last.
            async with trio.open_nursery() as nursery:

                async def fuse_main() -> None:
                    await pyfuse3.main()
                    log.warning("the mount on %s went away; stopping", mountpoint)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(fuse_main)
                async with trio.open_nursery() as services:
                    services.start_soon(daemon.cache_sync.run)
                    services.start_soon(daemon.indexer.run)
                    services.start_soon(daemon.household.run, listeners)
                    services.start_soon(daemon.lists.run, daemon.household)
                    services.start_soon(daemon.content.run)
                    services.start_soon(daemon.consensus.run)
                    services.start_soon(daemon.pruner.run)
                    services.start_soon(memory.give_back_freed_memory)
                    await _until_stopped(daemon, signals)
                    services.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            daemon.namespace.close()
            daemon.watcher.close()
            log.info("unmounted %s", mountpoint)


async def _until_stopped(daemon: Daemon, signals: AsyncIterator[int]) -> None:
    """Announce the mount, then serve reloads until SIGTERM or SIGINT."""
    mountpoint = daemon.config.node.mountpoint
    # Never touch the mount from this thread: it is the one that answers.
    with trio.fail_after(MOUNT_TIMEOUT):
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
    _raise_read_ahead(st.st_dev)
    n = len(daemon.config.arenas)
    log.info("mounted %d %s on %s", n, "arena" if n == 1 else "arenas", mountpoint)
    systemd.notify("READY=1")
    _status(daemon)
    async for signum in signals:
        if signum == signal.SIGHUP:
            await daemon.reload()
            continue
        log.info("%s: unmounting", signal.Signals(signum).name)
        systemd.notify("STOPPING=1", "STATUS=unmounting")
        with trio.move_on_after(GOODBYE_TIMEOUT):
            await daemon.household.close("shutting down")
        return


def run(config_path: Path) -> int:
    """Run the daemon until stopped; the process exit status."""
    try:
        config = config_mod.load(config_path)
    except ConfigError as exc:
        print(f"realizefs: {exc}", file=sys.stderr)
        return 2
    os.umask(0)  # objects are created with exactly the mode their user asked for
    log.info("realizefs %s starting: node %s, config %s", __version__, config.node.name, config.path)
    try:
        check_kernel_support()
        _lock_mountpoint(config.node.mountpoint)
        _clear_dead_mount(config.node.mountpoint)  # before anything is created in data_dir
        store = Store(config.node.data_dir)
    except (StoreError, OSError) as exc:
        log.error("%s", exc)
        return 1
    cache: ChunkCache | None = None
    try:
        cache = ChunkCache.from_config(config.node.data_dir, config.cache)
        identity = identity_mod.load_or_create(config.node.data_dir)
        _check_own_key(config, identity.public_key)
        daemon = Daemon(config, store, cache, identity)
        # A second SIGTERM/SIGINT while unmounting must not kill the daemon half-way:
        # _serve receives them while it runs, and they are ignored afterwards.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        trio.run(_serve, daemon)
    except ConfigError as exc:
        print(f"realizefs: {exc}", file=sys.stderr)
        return 2
    except (IdentityError, StoreError, OSError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        if cache is not None:
            cache.close()
        store.close()
    return 0
