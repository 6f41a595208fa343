"""The operator's work queue: which resources to reconcile, each by one worker at a time (client-go's semantics).

A key added any number of times before a worker takes it runs once; a key added while its pass runs is run again
right after. An urgent key goes to the front (a resource never reconciled: its Job is what everything else waits
for). Delayed adds (polls, retries) wait on one timer thread; a later delayed add of a key replaces the earlier
one, and `cancel` drops it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("freeatm.operator")


class WorkQueue(Generic[K]):
    """Run `run(key)` for every key added, on `workers` threads."""

    def __init__(self, run: Callable[[K], None], workers: int) -> None:
        self._run, self._workers = run, workers
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # queued, or added again while running
        self._running: set[K] = set()
        self._due: dict[K, float] = {}  # key → time.monotonic() of its delayed add
        self._timers: list[tuple[float, int, K]] = []  # heap; entries not matching _due are stale
        self._order = itertools.count()
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def start(self) -> WorkQueue[K]:
        targets = [self._work] * self._workers + [self._wake_due]
        for i, target in enumerate(targets):
            t = threading.Thread(target=target, name=f"freeatm-reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(10)

    def add(self, key: K, urgent: bool = False) -> None:
        with self._cond:
            self._add(key, urgent)

    def add_after(self, key: K, delay: float) -> None:
        with self._cond:
            at = time.monotonic() + delay
            self._due[key] = at
            heapq.heappush(self._timers, (at, next(self._order), key))
            self._cond.notify_all()

    def cancel(self, key: K) -> None:
        """Drop the delayed add of `key`, if any."""
        with self._cond:
            self._due.pop(key, None)

    def _add(self, key: K, urgent: bool = False) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._running:
            if urgent:
                self._queue.appendleft(key)
            else:
                self._queue.append(key)
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = self._queue.popleft()
                self._dirty.discard(key)
                self._running.add(key)
            try:
                self._run(key)
            except Exception:  # `run` handles its own failures; this keeps the worker alive
                log.exception("reconcile of %s failed", key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    if key in self._dirty:
                        self._queue.append(key)
                        self._cond.notify_all()

    def _wake_due(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    at, _, key = heapq.heappop(self._timers)
                    if self._due.get(key) == at:
                        del self._due[key]
                        self._add(key)
                self._cond.wait(self._timers[0][0] - now if self._timers else None)
