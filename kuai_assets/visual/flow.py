"""What joins the stages of the pass: a queue bounded by the bytes it holds, and a worker thread
that takes its items in order.

Numpy, BLAS and pyarrow release the GIL, so a worker's numerical work overlaps the thread that
feeds it; the bound keeps a slow worker from letting the feeding thread pile up memory: past it,
`put` waits (back-pressure).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")


class QueueClosed(RuntimeError):
    """The other side of a BoundedQueue stopped (after an error)."""


class BoundedQueue(Generic[Item]):
    """A FIFO between one producer and one consumer holding at most `limit` bytes of items.

    `put(item, nbytes)` waits while the items waiting hold `limit` bytes or more; an item is
    always admitted into an empty queue, so one larger than the bound passes alone (the bound is
    then exceeded by that one item). `get` waits for an item. `close(error)` wakes both sides:
    a `put` or `get` after it raises QueueClosed (from `error`, if given).
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a queue bound must be at least one byte, got {limit}")
        self.limit = limit
        self._items: deque[tuple[Item, int]] = deque()
        self._bytes = 0
        self._closed: BaseException | None = None
        self._is_closed = False
        self._changed = threading.Condition()
        self.waits = 0  # how many puts had to wait for room (back-pressure happened)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item, nbytes: int) -> None:
        with self._changed:
            if self._items and self._bytes + nbytes > self.limit and not self._is_closed:
                self.waits += 1
                self._changed.wait_for(lambda: not self._items or self._bytes + nbytes <= self.limit or self._is_closed)
            self._raise_if_closed()
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._changed.notify_all()

    def get(self) -> Item:
        with self._changed:
            self._changed.wait_for(lambda: self._items or self._is_closed)
            self._raise_if_closed()  # the items still waiting are dropped
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._changed.notify_all()
            return item

    def close(self, error: BaseException | None = None) -> None:
        with self._changed:
            self._is_closed, self._closed = True, error
            self._changed.notify_all()

    def _raise_if_closed(self) -> None:
        if self._is_closed:
            raise QueueClosed("the other side of the queue stopped") from self._closed


class Worker(Generic[Item]):
    """A thread applying `handle` to every item of a BoundedQueue, in order, until `finish`.

    `put` hands an item on (waiting while the queue is full); `finish` waits until every item
    handed on is handled and raises what `handle` raised, if it did. After a failure, `put`
    raises too, so the feeding thread stops instead of waiting for a worker that is gone.
    `stop` (on the way out after an error elsewhere) ends the thread without handling the rest.
    """

    _END = object()

    def __init__(self, name: str, handle: Callable[[Item], None], limit: int):
        self.queue: BoundedQueue = BoundedQueue(limit)
        self._handle = handle
        self._error: BaseException | None = None
        self._unhandled = 0  # items handed on and not handled yet
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def idle(self) -> bool:
        """Whether every item handed on so far is handled."""
        return self._unhandled == 0

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is self._END:
                    return
                self._handle(item)
                item = None  # not held while waiting for the next one
                with self._count:
                    self._unhandled -= 1
        except QueueClosed:
            return
        except BaseException as exc:  # handed to the feeding thread
            self._error = exc
            self.queue.close(exc)

    def put(self, item: Item, nbytes: int) -> None:
        with self._count:
            self._unhandled += 1
        try:
            self.queue.put(item, nbytes)
        except QueueClosed:
            self._raise_error()
            raise

    def finish(self) -> None:
        try:
            self.queue.put(self._END, 0)
        except QueueClosed:
            pass
        self._thread.join()
        self._raise_error()

    def stop(self) -> None:
        self.queue.close()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
