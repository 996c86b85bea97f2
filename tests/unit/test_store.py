"""The SQLite state store: jobs, the audit log, concurrency (lepton_lab/store)."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from lepton_lab.errors import JobNotFound
from lepton_lab.remote._spec import CellSpec
from lepton_lab.store import Store, get_store, reset_store
from lepton_lab.store._store import LOG_LIMIT

from ._store_worker import write_jobs


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "state.sqlite")


def new_job(store: Store, job_id: str, name: str | None = None, **kw):
    args = dict(kind="cell", name=name, cluster="10.0.0.5:6379", resources={"cpus": 1.0},
                source="x = 1", source_hash="abc123")
    args.update(kw)
    return store.create_job(job_id, **args)


def test_create_and_finish_job(store, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    before = time.time()
    job = new_job(store, "0101-aaaa0001", name="train", resources={"cpus": 2.0, "gpus": 1.0},
                  origin="kernel:abc")
    assert (job.status, job.user, job.name, job.kind) == ("running", "ada", "train", "cell")
    assert job.resources == {"cpus": 2.0, "gpus": 1.0} and job.origin == "kernel:abc"
    assert before <= job.created <= time.time() and not job.done
    store.finish_job(job.id, "failed", error="ValueError: boom", log="some output\n")
    job = store.get_job(job.id)
    assert (job.status, job.error, job.log) == ("failed", "ValueError: boom", "some output\n")
    assert job.done and job.finished >= job.started and job.elapsed >= 0
    assert job.to_dict()["elapsed"] == job.elapsed


def test_finish_happens_once_and_audit_is_submit_then_outcome(store, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "grace")
    new_job(store, "0101-aaaa0001", source_hash="h-1", resources={"cpus": 4.0, "gpus": 0.5})
    store.finish_job("0101-aaaa0001", "succeeded", log="first")
    store.finish_job("0101-aaaa0001", "failed", error="late", log="second")  # ignored
    store.finish_job("no-such-job", "failed")                                # ignored
    job = store.get_job("0101-aaaa0001")
    assert (job.status, job.error, job.log) == ("succeeded", None, "first")
    entries = list(store.iter_audit())
    assert [(e["action"], e["outcome"]) for e in entries] == [("submit", "submitted"),
                                                             ("outcome", "succeeded")]
    submit, outcome = entries
    for e in entries:
        assert e["user"] == "grace" and e["job_id"] == "0101-aaaa0001"
        assert e["source_hash"] == "h-1" and e["cluster"] == "10.0.0.5:6379"
        assert isinstance(e["ts"], float)
    assert submit["ts"] <= outcome["ts"]
    assert store.audit_entries(job_id="0101-aaaa0001")[-1]["resources"] == {"cpus": 4.0,
                                                                             "gpus": 0.5}


def test_find_job_by_id_prefix_and_name(store):
    new_job(store, "0101-aaaa0001", name="sweep")
    time.sleep(0.01)
    new_job(store, "0101-aaab0002", name="sweep")
    new_job(store, "0202-cccc0003", name="other")
    assert store.find_job("0101-aaaa0001").id == "0101-aaaa0001"   # exact id
    assert store.find_job("0202").id == "0202-cccc0003"            # unique prefix
    assert store.find_job("0101-aaab").id == "0101-aaab0002"
    assert store.find_job("sweep").id == "0101-aaab0002"           # newest of that name
    with pytest.raises(JobNotFound):
        store.find_job("0101-aaa")                                  # ambiguous prefix
    with pytest.raises(JobNotFound):
        store.find_job("nothing")
    with pytest.raises(JobNotFound):
        store.find_job("%")                                         # not a wildcard
    with pytest.raises(JobNotFound):
        store.get_job("0202")                                       # get_job: exact only


def test_find_job_underscore_is_not_a_wildcard(store):
    new_job(store, "1211-aaaa1111", name="other")
    new_job(store, "0101-bbbb2222", name="1_1")
    assert store.find_job("1_1").id == "0101-bbbb2222"


def test_list_jobs_newest_first_and_by_status(store):
    for i in range(3):
        new_job(store, f"0101-{i:08d}")
        time.sleep(0.01)
    store.finish_job("0101-00000001", "cancelled")
    assert [j.id for j in store.list_jobs()] == ["0101-00000002", "0101-00000001",
                                                 "0101-00000000"]
    assert [j.id for j in store.list_jobs(status="cancelled")] == ["0101-00000001"]
    assert len(store.list_jobs(limit=2)) == 2


def test_log_is_bounded(store):
    new_job(store, "0101-aaaa0001")
    log = "x" * LOG_LIMIT + "THE-END"
    store.finish_job("0101-aaaa0001", "succeeded", log=log)
    kept = store.get_job("0101-aaaa0001").log
    assert len(kept) == LOG_LIMIT and kept.endswith("THE-END")


def test_env_values_never_reach_the_database(tmp_path):
    path = tmp_path / "state.sqlite"
    store = Store(path)
    spec = CellSpec(env=(("OMP_NUM_THREADS", "s3cr3t-v4lue"),))
    store.create_job("0101-aaaa0001", kind="cell", name=None, cluster="c",
                     resources=spec.resources(), source="c0ntrol-marker = 1",
                     source_hash="h")
    store.finish_job("0101-aaaa0001", "succeeded", log="done")
    assert store.get_job("0101-aaaa0001").resources["env_keys"] == ["OMP_NUM_THREADS"]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("state"))
    assert b"c0ntrol-marker" in raw        # the scan does see what was stored
    assert b"OMP_NUM_THREADS" in raw
    assert b"s3cr3t-v4lue" not in raw


def test_get_store_lives_under_lepton_home(lepton_home):
    store = get_store()
    assert store.path == lepton_home / "state.sqlite"
    assert get_store() is store
    reset_store()
    assert get_store() is not store


def test_concurrent_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    Store(path)     # an existing store (the next test opens a new one while another writer holds it)
    ctx = multiprocessing.get_context("spawn")
    workers, per_worker = 4, 50
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=write_jobs, args=(path, w, per_worker, barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    store = Store(path)
    jobs = store.list_jobs(limit=10_000)
    assert len(jobs) == workers * per_worker
    assert {j.status for j in jobs} == {"succeeded"}
    assert all(j.log == f"log {j.id[1]} {int(j.id[3:])}\n" for j in jobs)
    audit = list(store.iter_audit())
    assert len(audit) == 2 * workers * per_worker
    by_job: dict[str, list[str]] = {}
    for e in audit:
        by_job.setdefault(e["job_id"], []).append(e["action"])
    assert len(by_job) == workers * per_worker
    assert all(actions == ["submit", "outcome"] for actions in by_job.values())
    seqs = [e["seq"] for e in audit]
    assert seqs == sorted(set(seqs))


def test_new_store_waits_for_another_writer_instead_of_failing(tmp_path):
    import sqlite3
    import threading

    path = tmp_path / "state.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")                   # another opener is mid-transaction
    other.execute("CREATE TABLE IF NOT EXISTS elsewhere (x)")
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    try:
        store = Store(path)                            # must wait (busy timeout), not fail
        new_job(store, "0101-aaaa0001")
        assert store.get_job("0101-aaaa0001").status == "running"
    finally:
        release.join()
        other.close()
