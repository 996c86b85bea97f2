"""Body of the concurrent-writer processes in test_store.py (importable under spawn)."""

from __future__ import annotations


def write_jobs(path: str, worker: int, count: int, barrier) -> None:
    from lepton_lab.store import Store

    barrier.wait(timeout=60)             # every process opens and writes at the same moment
    store = Store(path)
    for i in range(count):
        job_id = f"w{worker}-{i:03d}"
        store.create_job(job_id, kind="cell", name=f"worker-{worker}", cluster="127.0.0.1:1",
                         resources={"cpus": 1.0, "gpus": 0.0}, source=f"x = {i}",
                         source_hash=f"hash-{worker}-{i}")
        store.finish_job(job_id, "succeeded", log=f"log {worker} {i}\n")


def write_forever(path: str, prefix: str, ready) -> None:
    """Submit and finish jobs with growing logs until killed (the SIGKILL test's victim)."""
    from lepton_lab.store import Store

    store = Store(path)
    ready.set()
    i = 0
    while True:
        job_id = f"{prefix}-{i:06d}"
        store.create_job(job_id, kind="cell", name="victim", cluster="127.0.0.1:1",
                         resources={"cpus": 1.0}, source=f"x = {i}", source_hash=f"h{i}")
        if i % 2 == 0:
            store.finish_job(job_id, "succeeded", log="line\n" * (i % 500))
        i += 1
