"""Micro-batching: concurrent awaiters share one call of a batch function on a worker thread.

Why: a forward pass over 32 histories costs little more than over one, and an SQLite commit
(fsync) costs the same for one event batch as for twenty. The batcher adds no wait when idle:
it takes whatever is queued the moment the previous call finishes ("natural" batching), so
under load batches grow by themselves. ``window_s`` optionally waits a little longer to grow a
batch (note that the event loop rounds timer waits up to whole milliseconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class BatcherClosed(RuntimeError):
    """submit() after close(): the caller should retry on the current engine/store."""


class MicroBatcher(Generic[T, R]):
    """``await submit(x)`` -> ``fn([..., x, ...])[i]``; ``fn`` runs on ``executor``, one call at a time.

    ``fn`` returns one result per input, in order; a result that is an exception is raised
    to that caller only. If ``fn`` itself raises, every caller of that batch gets the error.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | BaseException]],
        executor: Executor | None,
        max_batch: int = 64,
        window_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.fn, self.executor = fn, executor
        self.max_batch, self.window_s = max_batch, window_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed("batcher is closed")
        if self._queue is None:  # created lazily: needs the running loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    async def close(self) -> None:
        """Stop accepting work, finish everything already queued, then stop the worker."""
        self._closed = True
        worker = self._worker
        # A worker that is done was cancelled with its event loop (asyncio.run ended): nothing to drain.
        if self._queue is not None and worker is not None and not worker.done():
            self._queue.put_nowait((_STOP, None))
            await worker

    def _drain(self, batch: list) -> bool:
        """Move queued items into ``batch`` (up to max_batch); True when a stop marker was seen."""
        assert self._queue is not None
        while len(batch) < self.max_batch and not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry[0] is _STOP:
                return True
            batch.append(entry)
        return False

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first[0] is _STOP:
                break
            batch = [first]
            await asyncio.sleep(self.window_s)  # 0: one loop turn lets already-received requests enqueue
            stop = self._drain(batch)
            batch = [(x, f) for x, f in batch if not f.done()]  # drop callers that went away
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                items = [x for x, _ in batch]
                results = self.fn(items) if self.executor is None else await loop.run_in_executor(
                    self.executor, self.fn, items)
            except Exception as err:  # noqa: BLE001 - every caller of the batch gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        # Anything queued after the stop marker raced with close(): fail it so nobody hangs.
        while not self._queue.empty():
            item, fut = self._queue.get_nowait()
            if fut is not None and not fut.done():
                fut.set_exception(BatcherClosed("batcher is closed"))
