"""The store under faults: a writer killed mid-write, a store from the previous release and
one from a newer release, a read-only and a full disk (real tmpfs mounts where this process
may mount, as root in CI; skipped elsewhere)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from lepton_lab.errors import StoreUnavailable
from lepton_lab.store import Store
from lepton_lab.store._schema import MIGRATIONS
from tests._reliability import record

from ._store_worker import write_forever, write_jobs


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def _new_job(store: Store, job_id: str, log: str | None = None) -> None:
    store.create_job(job_id, kind="cell", name="faults", cluster="127.0.0.1:1",
                     resources={"cpus": 1.0}, source="x = 1", source_hash="h")
    if log is not None:
        store.finish_job(job_id, "succeeded", log=log)


def test_writer_killed_mid_write_leaves_a_consistent_store(tmp_path):
    """SIGKILL a process that writes as fast as it can, three times: the file passes SQLite's
    integrity check, every job has exactly its submit entry (and its outcome entry when it
    finished), and the store takes new writes."""
    path = tmp_path / "state.sqlite"
    Store(path)
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        ready = ctx.Event()
        proc = ctx.Process(target=write_forever, args=(str(path), f"k{round_}", ready))
        proc.start()
        assert ready.wait(60), "the writer did not start"
        time.sleep(0.3 + 0.2 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
    assert _integrity(path) == "ok"
    store = Store(path)
    jobs = store.list_jobs(limit=100_000)
    assert len(jobs) > 3
    actions: dict[str, list[str]] = {}
    for e in store.iter_audit():
        actions.setdefault(e["job_id"], []).append(e["action"])
    for job in jobs:
        want = ["submit", "outcome"] if job.done else ["submit"]
        assert actions.get(job.id) == want, (job.id, job.status, actions.get(job.id))
    assert set(actions) == {j.id for j in jobs}        # no audit entry without its job
    _new_job(store, "after-the-kills", log="fine\n")
    assert store.get_job("after-the-kills").status == "succeeded"
    record("store_writer_sigkilled", tried=3, survived=3, jobs=len(jobs), data_lost=0)


def test_eight_processes_write_at_once_and_lose_nothing(tmp_path):
    path = str(tmp_path / "state.sqlite")
    ctx = multiprocessing.get_context("spawn")
    workers = 8
    per_worker = int(os.environ.get("LEPTON_STORE_WRITES", "25"))   # the full bench: 200
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=write_jobs, args=(path, w, per_worker, barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * workers
    store = Store(path)
    ids = [j.id for j in store.list_jobs(limit=10_000)]
    assert sorted(ids) == sorted(f"w{w}-{i:03d}" for w in range(workers)
                                 for i in range(per_worker))
    assert len(list(store.iter_audit())) == 2 * workers * per_worker
    assert _integrity(Path(path)) == "ok"
    record("store_concurrent_writers", tried=workers * per_worker, survived=len(ids),
           processes=workers, data_lost=0)


def test_a_store_of_the_previous_release_is_migrated_and_keeps_its_records(tmp_path):
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:-1]:                     # the schema one release back
        db.executescript(script)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) - 1}")
    db.execute("INSERT INTO jobs (id, name, kind, status, user, created) VALUES "
               "('old-1', 'before', 'cell', 'succeeded', 'ana', 1.0)")
    db.close()
    store = Store(path)
    assert store.get_job("old-1").name == "before"
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    store.set_job_progress("old-1", {"n": 1})          # the new column is there
    assert store.get_job("old-1").progress == {"n": 1}


def test_a_store_of_a_newer_release_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "state.sqlite"
    Store(path)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 2}")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreUnavailable) as err:
        Store(path)
    text = str(err.value)
    assert str(path) in text and "newer" in text and "\n" not in text
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


# -- a real read-only and a real full file system (tmpfs) --------------------------------------
def _mount(*args: str) -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True
                                                ).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs of our own."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)):
        pytest.skip("needs to mount a tmpfs (root in CI)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def read_only_view(tmp_path):
    """(a directory, the same directory mounted read-only elsewhere)."""
    src, view = tmp_path / "src", tmp_path / "view"
    src.mkdir(), view.mkdir()
    if not _mount("--bind", str(src), str(view)):
        pytest.skip("needs to bind-mount a directory (root in CI)")
    try:
        if not _mount("-o", "remount,bind,ro", str(view)):
            pytest.skip("needs to remount a bind mount read-only")
        yield src, view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_read_only_home_gives_one_line_that_names_the_store(read_only_view):
    src, view = read_only_view
    store = Store(src / "home" / "state.sqlite")
    _new_job(store, "before-ro", log="kept\n")
    for path in (view / "home" / "state.sqlite", view / "fresh" / "state.sqlite"):
        with pytest.raises(StoreUnavailable) as err:   # an existing store, and a new one
            _new_job(Store(path), "while-ro")
        text = str(err.value)
        assert str(path.parent) in text and "\n" not in text and "writable" in text, text
    assert store.get_job("before-ro").log == "kept\n"
    assert [j.id for j in store.list_jobs()] == ["before-ro"]
    assert _integrity(src / "home" / "state.sqlite") == "ok"


def test_a_full_disk_gives_one_line_and_keeps_what_was_written(tmpfs):
    path = tmpfs / "state.sqlite"
    store = Store(path)
    _new_job(store, "before-full", log="kept\n")
    with open(tmpfs / "filler", "wb") as f:            # fill the rest of the tmpfs
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with pytest.raises(StoreUnavailable) as err:
        for i in range(200):                           # each one needs new pages at last
            _new_job(store, f"full-{i}", log="x" * 20_000)
    text = str(err.value)
    assert str(path) in text and "full" in text and "\n" not in text
    (tmpfs / "filler").unlink()
    assert store.get_job("before-full").log == "kept\n"
    assert _integrity(path) == "ok"
    _new_job(store, "after-full", log="fine\n")        # space again: it writes again
    assert store.get_job("after-full").status == "succeeded"
