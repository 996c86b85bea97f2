"""Opportunistic dynamic batching for an endpoint replica.

A request that finds the model idle and nobody else in the replica runs at once, on the event
loop itself: no batch wait and no thread hand-off for a lone request (a hand-off to a thread
and back costs about 0.3 ms on the 2-core machine of docs/benchmarks.md). Requests that arrive
together, or while a forward pass runs, queue up and go through together in the next pass (at
most ``max_batch`` of them), which runs on one worker thread, so the replica's event loop keeps
reading and parsing requests meanwhile: that is what lets a batch form, whatever the ingress
in front of the replica does. (Behind Ray Serve's HAProxy ingress every request's handler used
to run start to end without a pause, so a batcher that waited for "others in flight" never
saw any.) "Alone" is decided after one turn of the event loop, so that handlers scheduled in
the same turn find each other.

``wait_s`` (the endpoint's ``batch_wait_ms``) is how long a batch that is not full may wait,
and it waits only when more requests are expected: others are already inside the replica but
not yet queued (their bodies are still being read or parsed), or fewer are queued than went
through the last forward pass (under steady load the clients just answered send again; without
this wait the batches would split into a full one and a straggler of one row). It never delays
a request that finds the replica idle.

Nothing here imports Ray: the batching is testable with a plain asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Batcher:
    """Groups concurrent :meth:`submit` calls into calls of ``infer(list_of_inputs)``.

    ``infer`` gets a list of inputs and returns one result per input, in order (a failed input's
    result is an exception object, which :meth:`submit` returns, not raises). ``arriving`` says
    how many requests are on their way to :meth:`submit` (0 when not known). ``on_batch`` is
    called with each batch's size (for metrics).
    """

    def __init__(self, infer: Callable[[list[Any]], list[Any]], max_batch: int, wait_s: float,
                 arriving: Callable[[], int] | None = None,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._infer = infer
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_s)
        self._arriving = arriving or (lambda: 0)
        self._on_batch = on_batch
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._driver: asyncio.Task | None = None
        self._more: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lepton-forward")

    async def submit(self, x: Any) -> Any:
        """Run ``x`` through the model, batched with whatever is queued; its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((x, fut))
        if self._more is not None:
            self._more.set()
        if self._idle() and len(self._queue) == 1 and self._arriving() == 0:
            await asyncio.sleep(0)     # handlers scheduled in this same turn get to queue up
            if self._idle() and len(self._queue) == 1 and self._queue[0][1] is fut:
                self._queue.clear()    # alone: run here, on the loop
                self._count(1)
                return self._infer_all([x])[0]
        if self._idle():
            self._driver = loop.create_task(self._drive())
        return await fut

    def _infer_all(self, xs: list[Any]) -> list[Any]:
        outs = self._infer(xs)
        if len(outs) != len(xs):
            raise RuntimeError(f"{len(outs)} results for a batch of {len(xs)}")
        return outs

    def _idle(self) -> bool:
        return self._driver is None or self._driver.done()

    def _count(self, size: int) -> None:
        if self._on_batch is not None:
            with contextlib.suppress(Exception):
                self._on_batch(size)

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0        # the size of the batch just run: its clients are likely to send again
        while True:
            if self.wait_s > 0 and len(self._queue) < self.max_batch and (
                    self._arriving() > 0 or len(self._queue) < last):
                await self._gather(loop.time() + self.wait_s, last)
            if not self._queue:
                return
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            batch = [(x, f) for x, f in batch if not f.done()]    # the client went away
            last = len(batch)
            if not batch:
                continue
            self._count(len(batch))
            try:
                outs = await loop.run_in_executor(self._pool, self._infer_all,
                                                  [x for x, _ in batch])
            except Exception as exc:  # noqa: BLE001 - a bug of the model code: tell every caller
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(out)

    async def _gather(self, until: float, want: int) -> None:
        """Wait until the batch is full or ``until`` passes, or until nobody else is on the way
        and ``want`` requests are queued."""
        loop = asyncio.get_running_loop()
        self._more = asyncio.Event()
        try:
            while len(self._queue) < self.max_batch and (
                    self._arriving() > 0 or len(self._queue) < want):
                left = until - loop.time()
                if left <= 0:
                    return
                self._more.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._more.wait(), left)
        finally:
            self._more = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
