"""The endpoint replica's opportunistic batcher (lepton_lab/serve/_batcher.py), on a plain
asyncio loop with a real blocking forward function (no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from lepton_lab.serve._batcher import Batcher


class Model:
    """A blocking 'forward pass': doubles each input, records the batch sizes and threads."""

    def __init__(self, seconds: float = 0.0, fail_on: object = None):
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, xs: list) -> list:
        self.batches.append(len(xs))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on in xs:
            raise RuntimeError("the model broke")
        time.sleep(self.seconds)
        return [2 * x for x in xs]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_lone_request_goes_through_at_once_whatever_the_batch_wait():
    model = Model()
    b = Batcher(model, max_batch=32, wait_s=5.0)

    async def go():
        t0 = time.perf_counter()
        out = await b.submit(21)
        return out, time.perf_counter() - t0

    out, took = run(go())
    assert out == 42 and model.batches == [1]
    assert took < 1.0                       # not the 5 s batch wait
    assert model.threads == {threading.current_thread().name}   # no hand-off to a thread
    b.close()


def test_handlers_scheduled_in_one_loop_turn_find_each_other():
    """Each handler runs without a pause until it submits (as behind Ray Serve's HAProxy
    ingress): they still share a forward pass instead of each running alone."""
    model = Model()
    b = Batcher(model, max_batch=32, wait_s=0.0)

    async def handler(i: int) -> int:
        return await b.submit(i)

    async def go():
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(handler(i)) for i in range(6)]
        return [await t for t in tasks]

    assert run(go()) == [0, 2, 4, 6, 8, 10]
    assert model.batches == [6]
    b.close()


def test_requests_that_arrive_together_share_forward_passes_of_at_most_max_batch():
    model = Model()
    b = Batcher(model, max_batch=4, wait_s=0.0)

    async def go():
        return await asyncio.gather(*(b.submit(i) for i in range(11)))

    assert run(go()) == [2 * i for i in range(11)]          # each gets its own answer
    assert model.batches == [4, 4, 3]
    b.close()


def test_requests_arriving_during_a_forward_pass_go_together_in_the_next_one():
    model = Model(seconds=0.3)
    b = Batcher(model, max_batch=32, wait_s=0.0)

    async def go():
        first = [asyncio.ensure_future(b.submit(i)) for i in (0, 1)]
        await asyncio.sleep(0.1)                 # the first pass is running on its thread
        later = [asyncio.ensure_future(b.submit(i)) for i in range(2, 7)]
        ticks = 0
        while not first[-1].done():              # the loop is free while the model runs
            await asyncio.sleep(0.01)
            ticks += 1
        return await asyncio.gather(*first), await asyncio.gather(*later), ticks

    first, later, ticks = run(go())
    assert first == [0, 2] and later == [4, 6, 8, 10, 12]
    assert model.batches == [2, 5]
    assert ticks >= 5
    assert all(n.startswith("lepton-forward") for n in model.threads)
    b.close()


def test_the_batch_waits_for_requests_already_inside_the_replica_but_not_longer():
    model = Model()
    arriving = [1]
    b = Batcher(model, max_batch=8, wait_s=2.0, arriving=lambda: arriving[0])

    async def go():
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)
        assert not first.done()                  # someone is on the way: it waits
        arriving[0] = 0
        second = await b.submit(2)               # ... and they share one pass
        return await first, second

    assert run(go()) == (2, 4)
    assert model.batches == [2]

    async def stuck():                           # the one on the way never comes
        arriving[0] = 1
        t0 = time.perf_counter()
        await b.submit(3)
        return time.perf_counter() - t0

    b.wait_s = 0.2
    took = run(stuck())
    assert 0.15 < took < 1.5
    b.close()


def test_a_failing_forward_pass_fails_its_batch_and_the_next_batch_still_runs():
    model = Model(fail_on=13)
    b = Batcher(model, max_batch=8, wait_s=0.0)

    async def go():
        results = await asyncio.gather(*(b.submit(i) for i in (1, 13, 3)),
                                       return_exceptions=True)
        return results, await b.submit(5)

    results, after = run(go())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after == 10
    b.close()


def test_a_request_whose_client_went_away_is_dropped_from_the_batch():
    model = Model(seconds=0.2)
    b = Batcher(model, max_batch=8, wait_s=0.0)

    async def go():
        first = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.05)                 # [1, 2] is in the model
        gone = asyncio.ensure_future(b.submit(100))
        kept = asyncio.ensure_future(b.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(*first), await kept

    assert run(go()) == ([2, 4], 6)
    assert model.batches == [2, 1]                # 100 never reached the model
    b.close()


def test_the_replica_batches_arrays_through_the_real_infer(replica):
    b = Batcher(replica._infer, max_batch=16, wait_s=0.0)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 3, 2)]

    async def go():
        return await asyncio.gather(*(b.submit(a) for a in arrays))

    outs = run(go())
    import torch

    for a, o in zip(arrays, outs):
        with torch.no_grad():
            np.testing.assert_allclose(o, replica._model(torch.from_numpy(a)).numpy(),
                                       rtol=1e-5, atol=1e-6)
    b.close()


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(Model(), max_batch=0, wait_s=0.0)


def test_under_steady_load_the_next_batch_waits_for_the_clients_just_answered():
    """Without this wait, the first client back after a batch would go through alone (a
    forward pass of one row) and the rest in the pass after: batches of 1 and k-1."""
    model = Model(seconds=0.05)
    b = Batcher(model, max_batch=8, wait_s=1.0)

    async def client(i: int) -> tuple[int, int]:
        a = await b.submit(i)
        await asyncio.sleep(0.01 * i)            # the clients come back one after another
        return a, await b.submit(i)

    async def go():
        return await asyncio.gather(*(client(i) for i in range(4)))

    t0 = time.perf_counter()
    assert run(go()) == [(2 * i, 2 * i) for i in range(4)]
    assert model.batches == [4, 4]
    assert time.perf_counter() - t0 < 1.0        # did not wait out the whole second
    b.close()
