"""The operator's work queue: one pass per burst of wake-ups, never two passes of one key at once."""

from __future__ import annotations

import threading

from freeatm.operator.workqueue import WorkQueue


class Recorder:
    """A `run` that records its keys; the first run of `hold` waits until `release` is set."""

    def __init__(self, hold: str | None = None) -> None:
        self.runs: list[str] = []
        self.hold, self.holding, self.release = hold, threading.Event(), threading.Event()
        self.done = threading.Condition()
        self.running: set[str] = set()
        self.overlap = False

    def __call__(self, key: str) -> None:
        with self.done:
            self.overlap |= key in self.running
            self.running.add(key)
        if key == self.hold and not self.holding.is_set():
            self.holding.set()
            self.release.wait(30)
        with self.done:
            self.running.discard(key)
            self.runs.append(key)
            self.done.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.runs) >= count, 30)
            return list(self.runs)


def test_a_key_added_many_times_before_its_pass_runs_once() -> None:
    run = Recorder()
    queue = WorkQueue(run, workers=1)
    for key in ("a", "a", "b", "a"):
        queue.add(key)
    queue.start()
    try:
        assert run.wait_for(2) == ["a", "b"]
        queue.add("c")  # runs after a and b: had a third pass of a been queued, it would come first
        assert run.wait_for(3) == ["a", "b", "c"]
    finally:
        queue.stop()


def test_a_key_added_while_its_pass_runs_runs_again_after_it() -> None:
    run = Recorder(hold="a")
    queue = WorkQueue(run, workers=4).start()
    try:
        queue.add("a")
        assert run.holding.wait(30)
        queue.add("a")
        queue.add("a")
        run.release.set()
        assert run.wait_for(2) == ["a", "a"]
        queue.add("z")
        assert run.wait_for(3) == ["a", "a", "z"] and not run.overlap
    finally:
        queue.stop()


def test_an_urgent_key_goes_before_the_others() -> None:
    run = Recorder()
    queue = WorkQueue(run, workers=1)
    queue.add("a")
    queue.add("b")
    queue.add("new", urgent=True)
    queue.start()
    try:
        assert run.wait_for(3) == ["new", "a", "b"]
    finally:
        queue.stop()


def test_a_cancelled_delayed_add_does_not_run() -> None:
    run = Recorder()
    queue = WorkQueue(run, workers=1).start()
    try:
        queue.add_after("late", 0.2)
        queue.cancel("late")
        queue.add_after("later", 0.3)  # due after "late" would have been
        assert run.wait_for(1) == ["later"]
    finally:
        queue.stop()
