"""The model registry, compression reports and endpoints in the state store."""

from __future__ import annotations

import threading

import pytest

from lepton_lab.errors import LeptonUsageError
from lepton_lab.store import ModelNotFound, Store, split_ref
from lepton_lab.store._schema import MIGRATIONS


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "state.sqlite")


def reg(store, name="digits", **kw):
    args = dict(kind="trained", format="torch", path=f"/m/{name}.pt", sha256="ab" * 32,
                size=1234, params=100)
    args.update(kw)
    return store.register_model(name, **args)


def test_versions_count_up_per_name_and_latest_is_the_default(store):
    assert reg(store).ref == "digits:1"
    assert reg(store, kind="compressed", parent="digits:1",
               settings={"prune": 0.5}).ref == "digits:2"
    assert reg(store, "other").ref == "other:1"
    latest = store.get_model("digits")
    assert latest.version == 2 and latest.parent == "digits:1"
    assert latest.settings == {"prune": 0.5}
    assert store.get_model("digits:1").kind == "trained"
    assert [m.ref for m in store.list_models("digits")] == ["digits:2", "digits:1"]


def test_missing_models_and_versions_say_what_exists(store):
    reg(store)
    with pytest.raises(ModelNotFound, match=r"no version 7; it has digits:1"):
        store.get_model("digits:7")
    with pytest.raises(ModelNotFound, match="no model 'nope'"):
        store.get_model("nope")


@pytest.mark.parametrize("ref", ["", "1abc", "a b", "digits:0", "digits:x", "d" * 65])
def test_bad_references_are_one_line_usage_errors(ref):
    with pytest.raises(LeptonUsageError) as info:
        split_ref(ref)
    assert "\n" not in str(info.value)


def test_concurrent_registrations_never_share_a_version(store):
    refs: list[str] = []

    def work():
        for _ in range(10):
            refs.append(reg(Store(store.path)).ref)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(refs, key=lambda r: int(r.split(":")[1])) == [f"digits:{i}"
                                                                for i in range(1, 41)]


def test_metrics_merge(store):
    reg(store, metrics={"acc": 0.9})
    store.update_model_metrics("digits:1", {"latency_ms": 1.5})
    assert store.get_model("digits:1").metrics == {"acc": 0.9, "latency_ms": 1.5}


def test_reports_round_trip(store):
    rows = [{"variant": "original", "params": 10}, {"variant": "int8", "params": 10}]
    rep = store.add_report("digits:1", rows, settings={"quantize": "int8"}, target="cpu")
    assert store.get_report(rep.id).rows == rows
    assert [r.id for r in store.list_reports("digits")] == [rep.id]


def test_endpoints_keep_creation_time_and_never_expose_the_hash(store):
    first = store.put_endpoint("api", model="digits:1", status="deploying",
                               token_hash="f" * 64, token_hint="abcd", config={"replicas": 2})
    store.set_endpoint_status("api", "running", url="http://127.0.0.1:8000/api")
    again = store.put_endpoint("api", model="digits:2", status="running", token_hash="e" * 64)
    assert again.created == first.created and again.model == "digits:2"
    assert "token_hash" not in again.to_dict()
    store.set_endpoint_status("api", "deleted")
    assert store.list_endpoints() == []
    assert [e.name for e in store.list_endpoints(include_deleted=True)] == ["api"]
    with pytest.raises(LeptonUsageError, match="no endpoint 'zzz'"):
        store.get_endpoint("zzz")


def test_the_catalog_migration_upgrades_an_existing_store(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version=2")
    db.execute("INSERT INTO runs (id, kind, user, status, created) VALUES ('r1', 'train', 'u',"
               " 'succeeded', 1.0)")
    db.commit()
    db.close()
    store = Store(path)
    assert store.get_run("r1").status == "succeeded"
    assert reg(store).ref == "digits:1"
