"""A simulated program (CTA): its threads, the scheduler that runs one of them at a time, the copy
engine that lands TMA copies, and the errors the simulator raises."""
from __future__ import annotations

import random
import threading
from typing import Any, Callable

import torch

POLICIES = ("eager", "lazy", "random")


class SimError(RuntimeError):
    """A kernel did something the hardware would not do as the kernel expects."""


class Deadlock(SimError):
    """No thread of a program can go on and no copy is in flight."""


class Abort(BaseException):
    """Unwinds the other threads of a program once one of them failed."""


_tls = threading.local()


def current_thread() -> "SimThread":
    t = getattr(_tls, "thread", None)
    if t is None:
        raise SimError("a Gluon operation ran outside a simulated program")
    return t


class SimThread:
    def __init__(self, program: "Program", name: str, num_warps: int):
        self.program, self.name, self.num_warps = program, name, num_warps
        self.turn = threading.Event()
        self.ready: Callable[[], bool] | None = None  # None: runnable; else runnable once it returns True
        self.waiting_for = ""
        self.finished = False
        self.mma: list = []  # issued wgmma (wgmma.Pending), oldest first
        self.stores: list[Copy] = []  # this thread's TMA stores / reductions in flight

    def runnable(self) -> bool:
        return not self.finished and (self.ready is None or self.ready())


class Copy:
    """A TMA copy in flight: `land()` carries it out."""

    def __init__(self, kind: str, land: Callable[[], None], owner: SimThread | None):
        self.kind, self.land, self.owner = kind, land, owner


class Program:
    """One program (CTA) of the grid: its threads, the scheduler's baton, the copy engine."""

    def __init__(self, pid: tuple[int, ...], num_warps: int, policy: str, rng: random.Random):
        self.pid, self.policy, self.rng = pid, policy, rng
        self.threads = [SimThread(self, "default", num_warps)]
        self.copies: list[Copy] = []
        self.barriers: list = []  # (memory.BarrierArray, for describe())
        self.error: BaseException | None = None

    # --- scheduling: the thread holding the baton calls switch() at every operation on shared state
    def switch(self, me: SimThread) -> None:
        """Give the scheduler a chance to run another thread or land a copy; returns once `me` is
        chosen again and runnable (immediately if the choice is `me`). A finished `me` just hands on."""
        while True:
            if self.error is not None:
                raise Abort
            nxt = self._choose(me)
            if nxt is me:
                return
            nxt.turn.set()
            if me.finished:
                return
            wait_turn(me)
            if self.error is not None:
                raise Abort
            if me.runnable():
                return

    def _choose(self, me: SimThread) -> SimThread:
        # eager: the last-spawned runnable thread (workers before the default partition; copies landed
        # at issue); lazy: the first runnable thread, a random copy only when none can go on; random:
        # any runnable thread or a random copy
        while True:
            runnable = [t for t in self.threads if t.runnable()]
            if not runnable and not self.copies:
                raise Deadlock(self.describe())
            if runnable and self.policy != "random":
                return runnable[-1] if self.policy == "eager" else runnable[0]
            options: list[Any] = runnable + (["copy"] if self.copies else [])
            pick = self.rng.choice(options)
            if pick != "copy":
                return pick
            self.land(self.rng.randrange(len(self.copies)))

    def land(self, i: int = 0) -> None:
        copy = self.copies.pop(i)
        copy.land()
        if copy.owner is not None:
            copy.owner.stores.remove(copy)

    def issue(self, copy: Copy) -> None:
        if copy.owner is not None:
            copy.owner.stores.append(copy)
        self.copies.append(copy)
        if self.policy == "eager":
            self.land(len(self.copies) - 1)

    def block(self, me: SimThread, ready: Callable[[], bool], what: str) -> None:
        """Wait until ready() (another thread or a landing copy makes it true)."""
        if ready():
            self.switch(me)
            return
        me.ready, me.waiting_for = ready, what
        try:
            self.switch(me)
        finally:
            me.ready, me.waiting_for = None, ""

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        for t in self.threads:
            t.turn.set()

    def describe(self) -> str:
        lines = [f"program {self.pid}: no thread can go on and no copy is in flight"]
        for t in self.threads:
            state = "finished" if t.finished else (f"waiting for {t.waiting_for}" if t.waiting_for else "running")
            lines.append(f"  thread {t.name}: {state}")
        for arr in self.barriers:
            for i, bar in enumerate(arr.bars):
                lines.append(f"  {arr.name}[{i}]: {bar.state()}")
        return "\n".join(lines)

    # --- warp_specialize: the default partition on this thread, each worker on its own
    def warp_specialize(self, partitions, worker_num_warps):
        me = current_thread()
        (default_fn, default_args), workers = partitions[0], partitions[1:]
        spawned = []
        for i, ((fn, args), warps) in enumerate(zip(workers, worker_num_warps)):
            t = SimThread(self, f"worker{i}:{getattr(fn, '__name__', fn)}", warps)
            self.threads.append(t)
            spawned.append((t, threading.Thread(target=self._worker, args=(t, fn, args), daemon=True)))
        for _, th in spawned:
            th.start()
        me.name = f"default:{getattr(default_fn, '__name__', default_fn)}"
        result = default_fn(*default_args)
        self.block(me, lambda: all(t.finished for t, _ in spawned), "its workers to finish")
        for _, th in spawned:
            th.join()
        self.check_retired(me)
        return result

    def _worker(self, me: SimThread, fn, args) -> None:
        _tls.thread = me
        torch.set_grad_enabled(False)  # (grad mode is per thread; the launching thread runs under no_grad)
        try:
            wait_turn(me)
            if self.error is None:
                fn(*args)
                self.check_retired(me)
        except Abort:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the launching thread
            self.fail(exc)
        finally:
            me.finished = True
            if self.error is None:
                try:
                    self.switch(me)
                except BaseException as exc:  # noqa: BLE001 - a deadlock found while handing on
                    self.fail(exc)
            _tls.thread = None

    def run(self, fn, args, kwargs) -> None:
        """Run the kernel body on the calling thread (the default partition's), then check that nothing is
        left in flight; raises the program's first failure."""
        main = self.threads[0]
        _tls.thread = main
        try:
            fn(*args, **kwargs)
            if self.copies:
                raise SimError(f"program {self.pid} ended with a TMA {self.copies[0].kind} in flight")
            self.check_retired(main)
        except Abort:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other threads unwound
            self.fail(exc)
        finally:
            main.finished = True
            _tls.thread = None
        if self.error is not None:
            raise self.error

    @staticmethod
    def check_retired(me: SimThread) -> None:
        if me.mma:
            raise SimError(f"thread {me.name} ended with {len(me.mma)} wgmma still in flight")


STALL_SECONDS = 120.0  # a thread that waits this long for its turn means the simulator itself is stuck


def wait_turn(me: SimThread) -> None:
    if not me.turn.wait(STALL_SECONDS):
        raise SimError(f"simulator stalled: thread {me.name} got no turn in {STALL_SECONDS:.0f} s")
    me.turn.clear()


class AsyncResult:
    """A value that exists only once retired (an async wgmma's result): using it before is an error."""


def ready_value(x, what: str):
    """x itself, unless it is an AsyncResult still in flight."""
    if isinstance(x, AsyncResult):
        raise SimError(f"{what}: an async wgmma result was used before warpgroup_mma_wait retired it")
    return x


def scheduling_point() -> SimThread:
    """Where an operation on shared state begins: the scheduler may run another thread or land a copy
    first. -> the calling thread."""
    me = current_thread()
    me.program.switch(me)
    return me


def yield_only(*_, **__):
    """An operation with no effect here (a fence, a partition's own barrier): only a scheduling point."""
    scheduling_point()
