"""The state store's training runs and job warnings, and the migration that added them."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from lepton_lab.errors import JobNotFound
from lepton_lab.store import RunRecord, Store, get_store
from lepton_lab.store._schema import MIGRATIONS
from lepton_lab.store._store import HISTORY_LIMIT, WARNINGS_LIMIT

#: The schema version just before runs and job warnings were added.
PRE_RUNS_VERSION = 1


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "state.sqlite")


def new_job(store: Store, job_id: str, name: str | None = None):
    return store.create_job(job_id, kind="cell", name=name, cluster="10.0.0.5:6379",
                            resources={"cpus": 1.0}, source="x = 1", source_hash="abc123")


def old_database(path) -> None:
    """A store file as a release before runs left it, holding one finished job."""
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:PRE_RUNS_VERSION]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version={PRE_RUNS_VERSION}")
    db.execute(
        "INSERT INTO jobs (id, name, kind, status, user, created, started, finished, cluster,"
        " resources, source, source_hash, log) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ("0101-01d00001", "legacy", "cell", "succeeded", "ada", 100.0, 100.0, 101.0, "c",
         '{"cpus": 2.0}', "x = 1", "h", "old output\n"),
    )
    db.close()


# -- runs ------------------------------------------------------------------------------------
def test_create_update_and_get_a_run(store, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    before = time.time()
    run = store.create_run("0101-aaaa0001-r0", job_id="0101-aaaa0001", kind="train",
                           name="resnet", config={"workers": 2, "flags": ["--gpus", "1"]},
                           storage="/data/ckpt/resnet")
    assert isinstance(run, RunRecord)
    assert (run.id, run.job_id, run.kind, run.name, run.user, run.status) == (
        "0101-aaaa0001-r0", "0101-aaaa0001", "train", "resnet", "ada", "running")
    assert run.config == {"workers": 2, "flags": ["--gpus", "1"]}
    assert (run.history, run.metrics, run.finished, run.error) == ([], {}, None, None)
    assert run.storage == "/data/ckpt/resnet" and before <= run.created <= time.time()
    assert not run.done

    points = [{"step": i, "epoch": 0, "rank": 0, "loss": 1.0 / (i + 1)} for i in range(3)]
    assert store.update_run(run.id, history=points, last_checkpoint="/data/ckpt/resnet/c2")
    run = store.get_run(run.id)
    assert run.history == points and run.last_checkpoint == "/data/ckpt/resnet/c2"
    assert run.status == "running" and run.finished is None     # untouched fields stay

    assert store.update_run(run.id, status="succeeded", metrics={"loss": 0.33, "acc": 0.9},
                            best_checkpoint="/data/ckpt/resnet/c1")
    run = store.get_run(run.id)
    assert (run.status, run.metrics, run.best_checkpoint) == (
        "succeeded", {"loss": 0.33, "acc": 0.9}, "/data/ckpt/resnet/c1")
    assert run.history == points and run.last_checkpoint == "/data/ckpt/resnet/c2"
    assert run.done and run.finished >= run.created
    finished = run.finished
    store.update_run(run.id, status="failed", error="late")    # finished is set once
    run = store.get_run(run.id)
    assert (run.status, run.error, run.finished) == ("failed", "late", finished)
    d = run.to_dict()
    assert d["id"] == run.id and d["history"] == points and d["config"]["workers"] == 2


def test_update_of_an_unknown_run_is_reported_not_raised(store):
    assert store.update_run("nothing", status="failed") is False
    assert store.update_run("nothing") is False
    store.create_run("r1", job_id="j1", kind="tune")
    assert store.update_run("r1") is True


def test_bad_kind_or_status_is_refused(store):
    with pytest.raises(ValueError):
        store.create_run("r1", job_id="j1", kind="fit")
    store.create_run("r1", job_id="j1", kind="train")
    with pytest.raises(ValueError):
        store.update_run("r1", status="done")
    assert store.get_run("r1").status == "running"


def test_numpy_like_values_are_stored_as_numbers(store):
    class Scalar:            # what numpy and torch scalars look like to the encoder
        def __init__(self, v):
            self.v = v

        def item(self):
            return self.v

    store.create_run("r1", job_id="j1", kind="train", config={"lr": Scalar(0.1)})
    store.update_run("r1", history=[{"loss": Scalar(2.5)}], metrics={"tags": {"a"},
                                                                    "obj": object})
    run = store.get_run("r1")
    assert run.config == {"lr": 0.1} and run.history == [{"loss": 2.5}]
    assert run.metrics["tags"] == ["a"] and isinstance(run.metrics["obj"], str)


def test_get_run_by_id_prefix_and_name(store):
    store.create_run("0101-aaaa0001-r0", job_id="j1", kind="train", name="sweep")
    time.sleep(0.01)
    store.create_run("0101-aaab0002-r0", job_id="j2", kind="tune", name="sweep")
    store.create_run("0202-cccc0003-r0", job_id="j3", kind="train", name="other")
    assert store.get_run("0101-aaaa0001-r0").id == "0101-aaaa0001-r0"    # exact id
    assert store.get_run("0202").id == "0202-cccc0003-r0"                # unique prefix
    assert store.get_run("0101-aaab").id == "0101-aaab0002-r0"
    assert store.get_run("sweep").id == "0101-aaab0002-r0"               # newest of that name
    with pytest.raises(JobNotFound, match="several training runs"):
        store.get_run("0101-aaa")                                         # ambiguous prefix
    with pytest.raises(JobNotFound, match=r"no training run 'nothing'; `%lepton runs`"):
        store.get_run("nothing")
    for not_a_pattern in ("%", "_", ""):
        with pytest.raises(JobNotFound):
            store.get_run(not_a_pattern)


def test_name_wins_over_an_ambiguous_prefix(store):
    store.create_run("ab-1", job_id="j", kind="train")
    store.create_run("ab-2", job_id="j", kind="train")
    store.create_run("zz-3", job_id="j", kind="train", name="ab")
    assert store.get_run("ab").id == "zz-3"


def test_not_found_is_a_one_line_usage_error(store):
    with pytest.raises(JobNotFound) as info:
        store.get_run("x")
    assert isinstance(info.value, ValueError) and info.value.http_status == 404
    assert info.value._render_traceback_() == [
        "JobNotFound: no training run 'x'; `%lepton runs` lists them"]


def test_list_runs_newest_first_and_by_kind(store):
    for i in range(4):
        store.create_run(f"r{i}", job_id="j", kind="tune" if i % 2 else "train")
    assert [r.id for r in store.list_runs()] == ["r3", "r2", "r1", "r0"]   # even on equal times
    assert [r.id for r in store.list_runs(kind="tune")] == ["r3", "r1"]
    assert [r.id for r in store.list_runs("train", limit=1)] == ["r2"]
    assert store.list_runs(kind="nothing") == []


def test_history_keeps_the_newest_points(store):
    store.create_run("r1", job_id="j", kind="train")
    points = [{"step": i, "loss": 0.5} for i in range(HISTORY_LIMIT + 250)]
    store.update_run("r1", history=points)
    kept = store.get_run("r1").history
    assert len(kept) == HISTORY_LIMIT == 20_000
    assert kept[0]["step"] == 250 and kept[-1]["step"] == HISTORY_LIMIT + 249
    store.update_run("r1", history=points[:3])                   # replaces, never appends
    assert store.get_run("r1").history == points[:3]


def test_runs_live_in_the_store_under_lepton_home(lepton_home):
    get_store().create_run("r1", job_id="j", kind="train", name="n")
    assert Store(lepton_home / "state.sqlite").get_run("n").id == "r1"


# -- job warnings ----------------------------------------------------------------------------
def test_job_warnings_are_deduplicated(store):
    job = new_job(store, "0101-aaaa0001")
    assert job.warnings == [] and job.to_dict()["warnings"] == []
    store.add_job_warning(job.id, "GPU 0 is 97% full")
    store.add_job_warning(job.id, "worker 3 restarted")
    store.add_job_warning(job.id, "GPU 0 is 97% full")
    job = store.get_job(job.id)
    assert job.warnings == ["GPU 0 is 97% full", "worker 3 restarted"]
    assert job.to_dict()["warnings"] == job.warnings
    assert store.find_job("0101").warnings == job.warnings
    assert store.list_jobs()[0].warnings == job.warnings
    store.add_job_warning("no-such-job", "ignored")                # like finish_job: no-op


def test_job_warnings_are_capped(store):
    new_job(store, "0101-aaaa0001")
    for i in range(WARNINGS_LIMIT + 30):
        store.add_job_warning("0101-aaaa0001", f"warning {i}")
    warnings = store.get_job("0101-aaaa0001").warnings
    assert len(warnings) == WARNINGS_LIMIT == 100
    assert warnings[0] == "warning 30" and warnings[-1] == f"warning {WARNINGS_LIMIT + 29}"


def test_warnings_do_not_touch_the_rest_of_the_job(store):
    new_job(store, "0101-aaaa0001", name="n")
    store.finish_job("0101-aaaa0001", "failed", error="boom", log="out\n")
    store.add_job_warning("0101-aaaa0001", "late warning")
    job = store.get_job("0101-aaaa0001")
    assert (job.status, job.error, job.log, job.warnings) == ("failed", "boom", "out\n",
                                                              ["late warning"])


# -- migration -------------------------------------------------------------------------------
def test_old_database_is_migrated_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "state.sqlite"
    old_database(path)
    store = Store(path)
    version = store._conn().execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS) > PRE_RUNS_VERSION
    job = store.get_job("0101-01d00001")
    assert (job.name, job.status, job.user, job.resources, job.log) == (
        "legacy", "succeeded", "ada", {"cpus": 2.0}, "old output\n")
    assert job.warnings == [] and job.to_dict()["warnings"] == []
    store.add_job_warning(job.id, "after the upgrade")
    assert store.get_job(job.id).warnings == ["after the upgrade"]
    store.create_run("r1", job_id=job.id, kind="train")
    assert store.list_runs()[0].job_id == job.id
    assert Store(path).get_run("r1").id == "r1"                  # reopening migrates nothing


# -- concurrency -----------------------------------------------------------------------------
def write_runs(path: str, worker: int, count: int, barrier) -> None:
    """Body of one writer process (importable under spawn): runs plus warnings on one job."""
    barrier.wait(timeout=60)        # every process opens (and migrates) at the same moment
    store = Store(path)
    for i in range(count):
        run_id = f"w{worker}-{i:03d}"
        store.create_run(run_id, job_id="0101-01d00001", kind="train", name=f"worker-{worker}")
        store.add_job_warning("0101-01d00001", "shared warning")
        store.add_job_warning("0101-01d00001", f"warning {worker} {i}")
        store.update_run(run_id, history=[{"step": s, "rank": worker} for s in range(i + 1)])
        store.update_run(run_id, status="succeeded", metrics={"i": i})


def test_concurrent_processes_migrate_once_and_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    old_database(path)
    ctx = multiprocessing.get_context("spawn")
    workers, per_worker = 2, 25
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=write_runs, args=(path, w, per_worker, barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    store = Store(path)
    runs = store.list_runs(limit=10_000)
    assert len(runs) == workers * per_worker
    assert {r.status for r in runs} == {"succeeded"}
    for r in runs:
        w, i = int(r.id[1]), int(r.id[3:])
        assert r.metrics == {"i": i} and r.finished is not None
        assert r.history == [{"step": s, "rank": w} for s in range(i + 1)]
    warnings = store.get_job("0101-01d00001").warnings
    assert warnings.count("shared warning") == 1
    assert sorted(warnings) == sorted(["shared warning"] + [
        f"warning {w} {i}" for w in range(workers) for i in range(per_worker)])
