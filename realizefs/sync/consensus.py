"""Consensus runs: this peer's Real made to agree with the versions the household holds.

A *pass* over an arena (`Consensus.run_pass`) surveys the index
(`Index.survey`: each Real path a peer's view holds another version of, and
each Unreal entry), asks `realizefs.consensus.agree` what each path is agreed
to be, and applies it to the Real with `realizefs.real.apply` (which acts only
if the disk is still as the index knew it), then records it with
`Index.adopt` (the peer's vector and origin, as Real; no history: not a change
of this peer's):

- a peer's newer version of a Real file is fetched (`realizefs.sync.content`:
  chunks held locally are never fetched: the old version's, other files',
  the cache's), staged in full, fsynced, and renamed over the file; a newer
  directory mode is applied; a newer symlink replaces the old one;
- a peer's delete of a Real path removes it (files first, then directories,
  deepest first; a directory holding files the peer did not know of stays);
  a peer's change of kind there removes it likewise and takes the new kind
  on as Unreal, realized by the full pass that follows where the mode says so;
- a peer's rename of a Real file moves it: the new path's content is the
  file about to be deleted at the old one (same hash), so it is renamed, not
  fetched;
- an Unreal entry whose effective mode is ``real`` (the nearest
  ``user.realize.mode`` on it or an ancestor in the Real, else the arena's)
  is realized: a file fetched and placed, a directory or symlink made;
- versions that say the same (alike: the same content made on two peers, a
  crash between a change and its record) only merge their vectors;
- a conflict (concurrent unlike versions): a losing version held here is
  moved to its conflict copy (`realizefs.real.conflicts`, shown under
  ``.realize/conflicts/``) and the winner taken; nothing is overwritten.

When: a *prompt* pass (deletes, moves, vectors, directory modes) shortly
after news from a peer, so a delete or a rename reaches the Real within
seconds; a *full* pass once no news came for `rest` seconds, every
`interval`, when ``now`` is written to ``.realize/consensus``, and to try
again what a full pass failed (after `RETRY_FIRST` seconds, doubling while
passes keep failing, at most `interval`). A pass
acts on the peers' versions this peer holds (their views): an offline peer
holds up nothing.

Runs in the daemon's trio thread; surveys, plans (xattr reads), disk changes
and index writes run in worker threads.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import trio

from realizefs.consensus.agree import Choice, Version, choose, keeping, loses, resolves
from realizefs.consensus.versions import Order, compare
from realizefs.errors import FsError
from realizefs.real import apply, staging, xattrs
from realizefs.real.backing import Backing, Owner
from realizefs.real.conflicts import copy_path, in_conflicts
from realizefs.store.cache import CacheFull
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Index, Offered, Record
from realizefs.sync.content import Content
from realizefs.types import Mode

log = logging.getLogger(__name__)

PROMPT_DELAY = 0.2  # seconds after news from a peer before a prompt pass
FETCH_BLOCK = 8 << 20  # bytes asked of the content at a time while fetching a file
FETCHES = 4  # files fetched at once
FAILURES_KEPT = 50  # failures listed per pass
RETRY_FIRST = 10.0  # seconds after a full pass with failures before the next; doubled each time in a row
CACHE_BATCH = 16 << 20  # bytes of an unrealized file's chunks put in the cache per transaction


@dataclass(frozen=True)
class Place:
    """An arena as consensus works on it."""

    name: str
    backing: Backing
    default: Mode


class Kind(enum.Enum):
    """What a step does; declared in the order a pass applies them (deletes last, deepest first)."""

    VECTOR = "merged"  # alike versions: only the vector taken on
    LEARN = "taken on"  # an Unreal entry or tombstone replaced by the agreed version (index only)
    MKDIR = "made directory"
    CHMOD = "mode set"
    MOVE = "moved"  # a file renamed where a peer renamed it
    KEEP = "kept as a conflict copy"  # a losing version here moved aside, the winner taken
    LINK = "made symlink"
    FETCH = "fetched"  # a file's content placed (realized, or a newer version)
    UNREALIZE = "given back"  # a Real file marked unreal, held by another peer: into the cache
    DELETE = "deleted"
    REPLACE = "replaced by another kind"  # removed as a delete, the new kind taken on as Unreal


_ORDER = list(Kind)


@dataclass(frozen=True)
class Step:
    kind: Kind
    path: tuple[bytes, ...]
    version: Record  # the agreed version
    held: Record  # what the index holds at the path
    source: Step | None = None  # a move: the delete of the old path it replaces
    real: bool = False  # a conflict copy kept: the winner is fetched to the path (mode real)


@dataclass
class Job:
    """A step that moves bytes (a fetch, a conflict copy kept, a file given back), queued or
    running: what `.realize/jobs` shows."""

    kind: str
    arena: str
    path: bytes
    total: int  # bytes
    done: int = 0
    started: float | None = None  # time.monotonic() when it began; None: queued


JOB_KINDS = frozenset({Kind.FETCH, Kind.KEEP, Kind.UNREALIZE})  # the steps that move bytes


@dataclass
class _Plan:
    """A pass's plan for one arena, as it is made."""

    place: Place
    full: bool
    report: Report
    steps: list[Step] = field(default_factory=list)
    deletes: dict[bytes, Step] = field(default_factory=dict)  # a deleted Real file's hash: for moves
    modes: dict[tuple[bytes, ...], Mode] = field(default_factory=dict)


@dataclass
class Report:
    """What one pass over the arenas did."""

    full: bool
    started: float  # wall clock
    finished: float | None = None
    applied: dict[str, int] = field(default_factory=dict)  # Kind's value -> count
    placed_bytes: int = 0  # of the files fetched and placed (their size)
    received_bytes: int = 0  # chunks received from peers meanwhile (user reads included)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # arena, path, why
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # arena, path
    waiting: int = 0  # paths left for a full pass (a prompt pass only moves, deletes, merges)
    retry_in: float | None = None  # seconds until a full pass tries again what failed

    def count(self, kind: Kind) -> None:
        self.applied[kind.value] = self.applied.get(kind.value, 0) + 1

    def fail(self, arena: str, path: Sequence[bytes], why: str) -> None:
        if len(self.failed) < FAILURES_KEPT:
            self.failed.append((arena, _show(path), why))
        log.warning("consensus: %s/%s: %s", arena, _show(path), why)


def _show(path: Sequence[bytes]) -> str:
    return b"/".join(path).decode(errors="replace")


def weighed(record: Record) -> Version:
    """*record* as consensus weighs it."""
    what = (record.kind, record.hash, record.target, record.mode & 0o7777 if record.kind != KIND_LINK else 0)
    return Version(record.vv, record.live, what, record.mtime_ns, record.origin)


class Consensus:
    """Runs passes (see the module doc) over the arenas *places* returns."""

    def __init__(
        self,
        index: Index,
        content: Content,
        places: Callable[[], list[Place]],
        expect: Callable[[str, bytes, os.stat_result | None], None],
        rest: float,
        interval: float,
        changed: Callable[[str, list[tuple[bytes, ...]]], None] = lambda arena, paths: None,
    ) -> None:
        self.index = index
        self.content = content
        self.places = places
        self.expect = expect  # the indexer's: the daemon's own changes of the Real
        self.rest = rest
        self.interval = interval
        self.changed = changed  # paths of an arena whose record changed: the kernel's caches drop them
        self.last: Report | None = None  # the last pass finished
        self.running: Report | None = None
        self.last_full: Report | None = None
        self._wake = trio.Event()
        self._now_requested = False
        self._prompt_at: float | None = None
        self._full_at: float | None = None
        self.retry_at: float | None = None  # trio time of a full pass retrying what failed
        self.retries = 0  # full passes in a row that failed something
        self._fetches = trio.Semaphore(FETCHES)
        self.jobs: dict[tuple[str, tuple[bytes, ...]], Job] = {}  # (arena, path): queued or running

    # ------------------------------------------------------------ when

    def news(self) -> None:
        """A peer told of changes: a prompt pass soon, a full one after the rest period."""
        now = trio.current_time()
        if self._prompt_at is None:
            self._prompt_at = now + PROMPT_DELAY
        self._full_at = now + self.rest
        self._wake.set()

    def progress(self, arena: str, path: tuple[bytes, ...]) -> tuple[int, int] | None:
        """(bytes done, total) of a fetch to *path* queued or under way, or None."""
        job = self.jobs.get((arena, path))
        return (job.done, job.total) if job is not None and job.kind == Kind.FETCH.value else None

    def request(self) -> None:
        """``now`` was written to ``.realize/consensus``: a full pass at once."""
        self._now_requested = True
        self._wake.set()

    async def run(self) -> None:
        """Run passes when they are due, until cancelled."""
        self._full_at = trio.current_time() + self.rest  # what came while we were down
        next_interval = trio.current_time() + self.interval
        while True:
            now = trio.current_time()
            due = [t for t in (self._prompt_at, self._full_at, self.retry_at, next_interval) if t is not None]
            if not self._now_requested and min(due) > now:
                with trio.move_on_at(min(due)):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            now = trio.current_time()
            full = (
                self._now_requested
                or any(t is not None and t <= now for t in (self._full_at, self.retry_at))
                or next_interval <= now
            )
            self._now_requested = False
            self._prompt_at = None
            if full:
                self._full_at = self.retry_at = None
                next_interval = now + self.interval
            try:
                report = await self.run_pass(full)
            except Exception:  # a pass that fails is logged and tried again at the next turn
                log.exception("consensus: a pass failed")
                continue
            if full:
                self._retry(report)
            if Kind.REPLACE.value in report.applied:  # the new kinds realized (where real) at once
                self._full_at = trio.current_time()

    def _retry(self, report: Report) -> None:
        """After a full pass: what failed is tried again by a full pass after `RETRY_FIRST`
        seconds, twice as long after each pass in a row that failed again, at most `interval`."""
        if not report.failed:
            self.retries = 0
            return
        self.retries += 1
        delay = min(RETRY_FIRST * 2 ** min(self.retries - 1, 30), self.interval)
        self.retry_at = trio.current_time() + delay
        report.retry_in = delay

    # ------------------------------------------------------------ a pass

    async def run_pass(self, full: bool) -> Report:
        """One pass over every arena (*full*: everything; else deletes, moves and merges)."""
        report = self.running = Report(full, time.time())
        received = self.content.received
        try:
            for place in self.places():
                root = await trio.to_thread.run_sync(self.index.arena_root, place.name)
                items = await trio.to_thread.run_sync(self.index.survey, place.name)
                steps = await trio.to_thread.run_sync(self._plan, place, items, full, report)
                await self._apply(place, root, steps, report)
        finally:
            report.received_bytes = self.content.received - received
            report.finished = time.time()
            self.running = None
            self.last = report
            if full:
                self.last_full = report
        if report.applied or report.failed or report.conflicts:
            log.info(
                "consensus (%s): %s; %d failed, %d in conflict",
                "full" if full else "prompt",
                ", ".join(f"{n} {k}" for k, n in sorted(report.applied.items())) or "nothing applied",
                len(report.failed),
                len(report.conflicts),
            )
        return report

    def _plan(self, place: Place, items: list[Offered], full: bool, report: Report) -> list[Step]:
        """What to do in *place* (worker thread: reads modes from the disk)."""
        plan = _Plan(place, full, report)
        unreal: list[tuple[Offered, Record]] = []
        for item in items:
            held = item.record
            offered = [r for _, r in item.offers]
            choice = choose([weighed(held), *map(weighed, offered)])
            if choice.conflict:
                self._plan_conflict(plan, item, offered, choice)
            elif not held.here:
                agreed = held
                if not resolves(choice, weighed(held)) or compare(choice.vv, held.vv) is not Order.EQUAL:
                    # a concurrent version won (an edit over a delete, or alike ones merged)
                    agreed = _agreed(held, offered, choice)
                unreal.append((item, agreed))
            else:
                self._plan_real(plan, item, offered, choice)
        for item, agreed in unreal:
            self._plan_unreal(plan, item, agreed)
        return plan.steps

    def _plan_conflict(self, plan: _Plan, item: Offered, offered: list[Record], choice: Choice) -> None:
        held, place = item.record, plan.place
        plan.report.conflicts.append((place.name, _show(item.path)))
        loser = held.here and held.kind == KIND_FILE and loses(choice, weighed(held))
        if loser and not held.pending and held.hash is not None and not in_conflicts(item.path):
            # this peer holds a losing version: kept aside, where every peer can read it
            real = effective_mode(plan.place, item.path, plan.modes) is Mode.REAL
            vv = keeping([weighed(held), *map(weighed, offered)], choice, weighed(held))  # not others' losers
            agreed = replace(_agreed(held, offered, choice), vv=vv)
            plan.steps.append(Step(Kind.KEEP, item.path, agreed, held, real=real))
        else:  # the winner's holders wait for the losers' to keep theirs and take it
            log.info("consensus: %s/%s: concurrent versions, kept as is", place.name, _show(item.path))

    def _plan_real(self, plan: _Plan, item: Offered, offered: list[Record], choice: Choice) -> None:
        """A path this peer's Real holds, and no conflict."""
        held, report = item.record, plan.report
        if resolves(choice, weighed(held)):
            if compare(choice.vv, held.vv) is not Order.EQUAL and not held.pending:
                plan.steps.append(Step(Kind.VECTOR, item.path, replace(held, vv=choice.vv), held))
            elif (
                item.holders
                and not held.pending
                and effective_mode(plan.place, item.path, plan.modes) is Mode.UNREAL
            ):
                if plan.full:  # another peer holds this very version in its Real: space given back
                    plan.steps.append(Step(Kind.UNREALIZE, item.path, replace(held, real=False), held))
                else:
                    report.waiting += 1
            return
        if held.pending:
            report.waiting += 1  # being written here: the indexer records it, then it is weighed
            return
        step = self._change(item.path, held, _agreed(held, offered, choice))
        if step.kind is Kind.DELETE and held.kind == KIND_FILE and held.hash is not None:
            plan.deletes.setdefault(held.hash, step)
            plan.steps.append(step)
        elif plan.full or step.kind in (Kind.DELETE, Kind.REPLACE, Kind.CHMOD):
            plan.steps.append(step)
        else:
            report.waiting += 1

    def _plan_unreal(self, plan: _Plan, item: Offered, agreed: Record) -> None:
        """A path this peer's Real does not hold (an Unreal entry or a tombstone here): moved here
        if a peer renamed a file held Real here, realized where the mode says so, else the
        agreed version taken on in the index."""
        held = item.record
        found = agreed.kind == KIND_FILE and agreed.live and agreed.hash is not None
        delete = plan.deletes.pop(agreed.hash, None) if found and agreed.hash else None
        if delete is not None:  # renamed by a peer: moved here, not fetched
            plan.steps.remove(delete)
            plan.steps.append(Step(Kind.MOVE, item.path, agreed, held, delete))
        elif agreed.live and effective_mode(plan.place, item.path, plan.modes) is Mode.REAL:
            if plan.full:
                kind = {KIND_FILE: Kind.FETCH, KIND_DIR: Kind.MKDIR, KIND_LINK: Kind.LINK}[agreed.kind]
                plan.steps.append(Step(kind, item.path, agreed, held))
            elif agreed is not held:
                plan.steps.append(Step(Kind.LEARN, item.path, agreed, held))
            else:
                plan.report.waiting += 1
        elif agreed is not held:
            plan.steps.append(Step(Kind.LEARN, item.path, agreed, held))

    @staticmethod
    def _change(path: tuple[bytes, ...], held: Record, winner: Record) -> Step:
        if not winner.live:
            return Step(Kind.DELETE, path, winner, held)
        if winner.kind != held.kind:
            return Step(Kind.REPLACE, path, winner, held)
        if winner.kind == KIND_FILE:
            return Step(Kind.FETCH, path, winner, held)
        if winner.kind == KIND_DIR:
            return Step(Kind.CHMOD, path, winner, held)
        return Step(Kind.LINK, path, winner, held)

    # ------------------------------------------------------------ applying

    async def _apply(self, place: Place, root: int, steps: list[Step], report: Report) -> None:
        for step in steps:
            if step.kind in JOB_KINDS:
                size = step.held.size if step.kind is Kind.UNREALIZE else step.version.size
                rel = b"/".join(step.path)
                self.jobs[place.name, step.path] = Job(step.kind.value, place.name, rel, size)
        try:
            await self._apply_steps(place, root, steps, report)
        finally:  # (a pass that fails leaves no job listed)
            for step in steps:
                self.jobs.pop((place.name, step.path), None)

    async def _apply_steps(self, place: Place, root: int, steps: list[Step], report: Report) -> None:
        last = (Kind.DELETE, Kind.REPLACE)  # deepest first: a directory replaced once emptied
        first = sorted((s for s in steps if s.kind not in last), key=lambda s: (_ORDER.index(s.kind), s.path))
        async with trio.open_nursery() as nursery:
            for step in first:
                if step.kind in (Kind.KEEP, Kind.FETCH):
                    await self._fetches.acquire()
                    nursery.start_soon(self._limited, place, root, step, report)
                else:
                    await self._step(place, root, step, report)
        deletes = sorted((s for s in steps if s.kind in last), key=lambda s: s.path, reverse=True)
        for step in deletes:
            await self._step(place, root, step, report)

    async def _step(self, place: Place, root: int, step: Step, report: Report) -> None:
        job = self._start_job(place, step)
        try:
            done = await trio.to_thread.run_sync(self._disk_step, place, root, step)
        except (OSError, FsError) as exc:
            report.fail(place.name, step.path, f"{step.kind.value}: {exc}")
            return
        finally:
            if job is not None:
                del self.jobs[place.name, step.path]
        if done:
            report.count(step.kind)
            self.changed(place.name, [step.path] if step.source is None else [step.path, step.source.path])
        elif step.kind is not Kind.VECTOR:
            log.info(
                "consensus: %s/%s changed meanwhile: not %s", place.name, _show(step.path), step.kind.value
            )

    def _disk_step(self, place: Place, root: int, step: Step) -> bool:
        """Apply one step other than a fetch (worker thread); whether it was applied."""
        backing, rel = place.backing, b"/".join(step.path)
        expect = self._expecting(place)
        held, version = step.held, step.version
        if step.kind is Kind.VECTOR:
            return self.index.adopt(root, step.path, held.vv, version)
        if step.kind is Kind.LEARN:
            return self.index.adopt(root, step.path, held.vv, version, real=False)
        if step.kind is Kind.UNREALIZE:
            return self._give_back(place, root, step)
        if step.kind in (Kind.DELETE, Kind.REPLACE):
            if held.kind == KIND_FILE:
                done = apply.remove_file(backing, rel, (held.size, held.mtime_ns), expect)
            elif held.kind == KIND_LINK:
                done = apply.remove_link(backing, rel, held.target or b"", expect)
            else:
                done = apply.remove_dir(backing, rel, expect)
                if not done:
                    raise FsError("it holds files the peer did not know of: kept", errno=errno.ENOTEMPTY)
            # replaced: the new kind taken on as Unreal, made Real by the full pass that follows
            return done and self.index.adopt(root, step.path, held.vv, version, real=step.kind is Kind.DELETE)
        if not self._parents(place, root, step.path[:-1]):
            raise FsError("its directory is not in the Real", errno=errno.ENOENT)
        owner = _owner(backing)
        if step.kind is Kind.MKDIR:
            done = apply.make_dir(backing, rel, version.mode, owner, expect)
        elif step.kind is Kind.CHMOD:
            done = apply.set_mode(backing, rel, version.mode, expect)
        elif step.kind is Kind.LINK:
            if held.here and held.kind == KIND_LINK:
                apply.remove_link(backing, rel, held.target or b"", expect)
            done = apply.make_link(backing, rel, version.target or b"", owner, expect)
        else:  # a move: the old path's delete, and the new path's version, in one go
            return self._move(place, root, step)
        return done and self.index.adopt(root, step.path, held.vv, version)

    def _move(self, place: Place, root: int, step: Step) -> bool:
        """Move a file where a peer renamed it: checked, moved and recorded under the index's
        write lock, so neither path's record changes in between (a peer's next rename or delete
        of the new path, taken meanwhile, left the file moved there and kept with that record's
        vector: it never converged); the indexer told before the lock is taken."""
        gone = step.source
        assert gone is not None
        old, backing = gone.held, place.backing
        source, rel = b"/".join(gone.path), b"/".join(step.path)
        known = (old.size, old.mtime_ns)
        st = apply.lstat(backing, source)
        if not apply.is_known(st, known):
            return False
        expect = self._expecting(place)
        expect(source, None)
        expect(rel, st)
        with self.index.batch():
            if not (self._holds(root, gone.path, old.vv) and self._holds(root, step.path, step.held.vv)):
                return False
            if apply.move(backing, source, rel, known, _told) is None:
                return False
            self.index.adopt(root, gone.path, old.vv, gone.version)
            return self.index.adopt(root, step.path, step.held.vv, step.version)

    def _holds(self, root: int, path: tuple[bytes, ...], vv: dict[bytes, int]) -> bool:
        """Whether the index holds version *vv* at *path* (in a batch: until it ends)."""
        return compare(self._vv_at(root, path), vv) is Order.EQUAL

    def _give_back(self, place: Place, root: int, step: Step) -> bool:
        """Unrealize a Real file (worker thread): its chunks into the cache (evictable: as
        many as fit), the index's record Unreal with its vector unchanged (not a delete:
        peers' views do not change), then the file removed if it is still that version."""
        held = step.held
        manifest = self.index.manifest(held.hash) if held.hash is not None else None
        if manifest is None:
            raise FsError("its chunks are not known", errno=errno.EIO)
        rel, known = b"/".join(step.path), (held.size, held.mtime_ns)
        try:
            for batch in apply.chunks_of(place.backing, rel, known, manifest, CACHE_BATCH):
                with contextlib.suppress(CacheFull):  # the cache is full of pinned chunks: not kept
                    self.content.cache.put_many(batch)
        except FsError as exc:
            if exc.errno == errno.EAGAIN:
                return False  # written meanwhile: the indexer records it, then it is weighed
            raise
        # recorded first, then removed: the mount shows the Real file until it goes, then the
        # Unreal entry (removed first, a lookup in between found neither); a file written
        # meanwhile stays, and the indexer records it as a change over the Unreal entry
        still = apply.is_known(apply.lstat(place.backing, rel), known) and not apply.written(
            place.backing, rel
        )
        if not (still and self.index.adopt(root, step.path, held.vv, step.version, real=False)):
            return False
        apply.remove_file(place.backing, rel, known, self._expecting(place))
        return True

    def _expecting(self, place: Place) -> apply.Expect:
        """The indexer's `expect` for *place*, called from a worker thread."""

        def expect(path: bytes, st: os.stat_result | None) -> None:
            trio.from_thread.run_sync(self.expect, place.name, path, st)

        return expect

    def _parents(self, place: Place, root: int, path: tuple[bytes, ...]) -> bool:
        """Make the Unreal-only directories of *path* in the Real (their records adopted)."""
        for i in range(1, len(path) + 1):
            at = path[:i]
            rel = b"/".join(at)
            st = apply.lstat(place.backing, rel)
            if st is not None:
                continue
            found = self.index.entry(root, at)
            if found is None or found[1].kind != KIND_DIR:
                return False
            if not apply.make_dir(
                place.backing, rel, found[1].mode, _owner(place.backing), self._expecting(place)
            ):
                return False
            self.index.adopt(root, at, found[1].vv, found[1])
        return True

    async def _limited(self, place: Place, root: int, step: Step, report: Report) -> None:
        """A fetch or a kept conflict copy, holding one of `_fetches`."""
        self._start_job(place, step)
        try:
            await (self._keep if step.kind is Kind.KEEP else self._fetch)(place, root, step, report)
        finally:
            self._fetches.release()
            self.jobs.pop((place.name, step.path), None)

    def _start_job(self, place: Place, step: Step) -> Job | None:
        job = self.jobs.get((place.name, step.path))
        if job is not None:
            job.started = time.monotonic()
        return job

    async def _keep(self, place: Place, root: int, step: Step, report: Report) -> None:
        """Move this peer's losing version of a file to its conflict copy's path, then take the
        winner there: fetched where the mode is real, else as an Unreal entry (holds
        `_fetches`)."""
        try:
            kept = await trio.to_thread.run_sync(self._keep_aside, place, root, step)
            if not kept:
                log.info("consensus: %s/%s changed meanwhile: not kept aside", place.name, _show(step.path))
                return
            report.count(Kind.KEEP)
            copy = conflict_copy(step.path, step.held)
            self.changed(place.name, [step.path, copy])
            log.info("consensus: %s/%s: this version kept as %s", place.name, _show(step.path), _show(copy))
            gone = replace(step.held, real=False)  # nothing at the path now
            if step.real:
                await self._fetch(place, root, Step(Kind.FETCH, step.path, step.version, gone), report)
            elif await trio.to_thread.run_sync(
                lambda: self.index.adopt(root, step.path, step.held.vv, step.version, real=False)
            ):
                report.count(Kind.LEARN)
        except (OSError, FsError) as exc:
            report.fail(place.name, step.path, f"keeping a conflict copy: {exc}")

    def _keep_aside(self, place: Place, root: int, step: Step) -> bool:
        """Move the losing version at *step.path* to its conflict copy (worker thread)."""
        held, backing = step.held, place.backing
        copy = conflict_copy(step.path, held)
        for i in range(1, len(copy)):  # its directories: ordinary ones, recorded by the indexer
            with contextlib.suppress(FileExistsError):
                parent, name = b"/".join(copy[: i - 1]), copy[i - 1]
                backing.mkdir(parent, name, 0o755, _owner(backing))
        rel, dest, known = b"/".join(step.path), b"/".join(copy), (held.size, held.mtime_ns)
        if apply.lstat(backing, dest) is not None:  # kept before (its name says its content)
            if not apply.remove_file(backing, rel, known, self._expecting(place)):
                return False
        elif apply.move(backing, rel, dest, known, self._expecting(place)) is None:
            return False
        else:
            self.index.adopt(root, copy, self._vv_at(root, copy), held)
        return True

    def _vv_at(self, root: int, path: tuple[bytes, ...]) -> dict[bytes, int]:
        """The vector the index holds at *path*, a tombstone's too ({}: nothing)."""
        found = self.index.get(root, list(path), unreal=True, tombstones=True)
        return found.vv if found is not None else {}

    async def _fetch(self, place: Place, root: int, step: Step, report: Report) -> None:
        """Fetch a file's version, stage it, and place it."""
        try:
            size = await self._fetch_one(place, root, step)
        except (OSError, FsError) as exc:
            report.fail(place.name, step.path, f"fetch: {exc}")
        else:
            if size is None:
                log.info("consensus: %s/%s changed meanwhile: not fetched", place.name, _show(step.path))
            else:
                report.count(Kind.FETCH)
                report.placed_bytes += size
                self.changed(place.name, [step.path])

    async def _fetch_one(self, place: Place, root: int, step: Step) -> int | None:
        version, held, backing = step.version, step.held, place.backing
        apply.checked(b"/".join(step.path))  # nothing fetched for a path never placed
        if not await trio.to_thread.run_sync(self._parents, place, root, step.path[:-1]):
            raise FsError("its directory is not in the Real", errno=errno.ENOENT)
        manifest = await self.content.manifest(place.name, step.path, version)
        fd, staged = await trio.to_thread.run_sync(
            staging.stage, backing, version.mode & 0o7777, _owner(backing)
        )
        try:
            offset = 0
            while offset < version.size:
                data = await self.content.read(
                    place.name, step.path, version, offset, min(FETCH_BLOCK, version.size - offset)
                )
                if not data:
                    raise FsError("the content ended early", errno=errno.EIO)
                await trio.to_thread.run_sync(apply.write_at, fd, data, offset)
                offset += len(data)
                if (job := self.jobs.get((place.name, step.path))) is not None:
                    job.done = offset
            await trio.to_thread.run_sync(apply.seal, fd, version.mtime_ns)
        except BaseException:
            staging.discard(backing, staged)
            raise
        finally:
            os.close(fd)

        def place_it() -> bool:
            rel = b"/".join(step.path)
            over = (held.size, held.mtime_ns) if held.here else None
            try:  # told before the index's write lock is taken (the event loop may wait for it)
                self._expecting(place)(rel, backing.stat(staged))
            except BaseException:
                staging.discard(backing, staged)
                raise
            with self.index.batch():  # no change of the index between its check and the rename
                if not self._holds(root, step.path, held.vv):
                    staging.discard(backing, staged)  # the user or a peer changed it meanwhile
                    return False
                placed = apply.place(backing, rel, staged, over, _told)
                return placed is not None and self.index.adopt(root, step.path, held.vv, version, manifest)

        return version.size if await trio.to_thread.run_sync(place_it) else None


def _agreed(held: Record, offered: list[Record], choice: Choice) -> Record:
    """The agreed version as a record: the winner's (a peer's, or *held* if it is alike),
    with the vector that dominates every version weighed (alike ones merged)."""
    if resolves(choice, weighed(held)):
        return replace(held, vv=choice.vv)
    return replace(next(r for r in offered if weighed(r) == choice.winner), vv=choice.vv)


def conflict_copy(path: tuple[bytes, ...], held: Record) -> tuple[bytes, ...]:
    """Where a losing version of *path* is kept (`realizefs.real.conflicts`; the same name on
    every peer: made by several, they are one version)."""
    assert held.hash is not None
    return copy_path(path, held.origin, held.hash)


def _told(path: bytes, st: os.stat_result | None) -> None:
    """The indexer was told already (before the index's write lock was taken)."""


def effective_mode(place: Place, path: tuple[bytes, ...], modes: dict[tuple[bytes, ...], Mode]) -> Mode:
    """The effective mode of *path*: the nearest stored on it or an ancestor in the Real
    (*modes*: those found so far, added to). A loop, not a recursion: a tree may be deeper
    than Python's recursion limit (a pass then failed, every time)."""
    above: list[tuple[bytes, ...]] = []  # paths whose mode is their nearest ancestor's
    mode = place.default
    for i in range(len(path), -1, -1):
        at = path[:i]
        if at in modes:
            mode = modes[at]
            break
        stored: Mode | None = None
        with contextlib.suppress(FsError, OSError):
            stored = xattrs.stored_mode(place.backing, b"/".join(at))
        if stored is not None:
            mode = modes[at] = stored
            break
        above.append(at)
    for at in above:
        modes[at] = mode
    return mode


def _owner(backing: Backing) -> Owner:
    """New objects belong to the arena root's owner."""
    st = backing.stat(b"")
    return Owner(st.st_uid, st.st_gid, lambda g: True)
