"""A run's placement groups outlive the task that made them; the kernel's ledger frees them."""

from __future__ import annotations

import pytest

from .conftest import wait_for_free_cpus

pytestmark = pytest.mark.integration


def test_placement_groups_noted_by_ranks_are_released(cluster):
    import ray

    from lepton_lab.remote._guard import Ledger, note_placement_group, release_placement_groups
    from lepton_lab.remote._runner import cancel_streams

    ledger = ray.remote(num_cpus=0)(Ledger).remote()

    @ray.remote(num_cpus=0)
    def driver(ledger):  # a stand-in for the Train controller: it reserves the CPUs ...
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = placement_group([{"CPU": 1}, {"CPU": 1}])
        ray.get(pg.ready(), timeout=30)

        @ray.remote(num_cpus=1)
        def rank(ledger):
            note_placement_group(ledger)   # ... and each rank notes the group it runs in
            return True

        strategy = PlacementGroupSchedulingStrategy(pg)
        ray.get([rank.options(scheduling_strategy=strategy).remote(ledger) for _ in range(2)])
        yield "ready"
        import time
        time.sleep(600)

    gen = driver.options(name="lepton-test-driver").remote(ledger)
    assert ray.get(next(gen), timeout=60) == "ready"
    cancel_streams([gen])                   # the driving task is killed ...
    import time
    time.sleep(1.0)
    assert ray.available_resources().get("CPU", 0) == 0   # ... yet Ray keeps the group
    assert release_placement_groups(ledger) == 1
    wait_for_free_cpus(timeout=5)
    assert release_placement_groups(ledger) == 0          # a second call finds nothing left
    ray.kill(ledger)
