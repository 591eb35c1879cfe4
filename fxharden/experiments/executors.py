"""Where independent tasks (experiment cells, sweep chunks) run: one interface, two backends.

``Executor`` takes tasks (``submit(key, fn, *args)``), hands back one ``Outcome`` per key as
tasks finish (``as_completed``), retries a failing task up to ``retries`` times and then
reports it with its traceback while the other tasks go on, and cancels what is left on
Ctrl-C (``cancel``). Results travel back to the driver, which writes them.

* ``LocalExecutor``: ``jobs=1`` runs tasks in this process, one after another; ``jobs>1``
  runs them in a pool of fresh (spawned) processes, each with ``cpus // jobs`` threads.
* ``RayExecutor``: each task is an independent Ray task with declared resources
  (``num_cpus``, a fraction of a GPU with ``num_gpus``), on a local Ray instance started
  here (``address=None``) or on a running cluster (``address="ray://..."`` or ``"auto"``).
  Ray is an optional extra: ``pip install 'fxharden[ray]'``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = ["Outcome", "Executor", "LocalExecutor", "RayExecutor", "ExecutorKind", "make_executor", "RAY_EXTRA"]

RAY_EXTRA = "pip install 'fxharden[ray]'"


class ExecutorKind(str, Enum):
    """The executor backends (CLI ``--executor``)."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class Outcome:
    """The end of one task: its value, or the traceback of its last failed attempt."""

    key: str
    value: Any = None
    error: Optional[str] = None
    """Formatted traceback of the last attempt (``None`` when the task succeeded)."""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def _format_error(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


def _call(fn: Callable, args: Tuple, threads: Optional[int]) -> Any:
    """Run one task in a worker, with ``threads`` torch threads (shared by every backend)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(*args)


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Pool-worker initializer: end this worker when the driver ``parent`` dies, even by
    SIGKILL, so no orphan keeps computing (and racing a restarted driver).

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); a daemon
    thread that polls ``os.getppid()`` covers other systems and the window before the prctl."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # no libc/prctl: the thread below still does it
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="fxharden-parent-watch", daemon=True).start()


def _torch_threads(n: Optional[int] = None) -> int:
    """Torch's intra-op thread count; sets it first when ``n`` is given."""
    import torch

    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


class Executor(ABC):
    """Runs keyed tasks and reports each one once, with retries. Use as a context manager.

    Args:
        retries: extra attempts for a task that raised (or whose worker died).
    """

    shared_filesystem: bool = True
    """Whether tasks see the driver's files (checkpoints written by a task are then visible)."""

    def __init__(self, retries: int = 0) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries = retries
        self._tasks: Dict[str, Tuple[Callable, Tuple]] = {}
        self._attempts: Dict[str, int] = {}
        self._running: Dict[Any, str] = {}  # backend handle -> key

    def submit(self, key: str, fn: Callable, *args: Any) -> None:
        """Queue ``fn(*args)`` under ``key`` (unique among the pending tasks). ``fn`` must be
        importable by the workers (a module-level function) and the args picklable."""
        if key in self._tasks:
            raise ValueError(f"task {key!r} is already pending; keys must be unique")
        self._tasks[key] = (fn, args)
        self._attempts[key] = 0
        self._launch(key)

    def _launch(self, key: str) -> None:
        fn, args = self._tasks[key]
        self._attempts[key] += 1
        self._running[self._start(fn, args)] = key

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet reported."""
        return len(self._tasks)

    def as_completed(self) -> Iterator[Outcome]:
        """Yield one ``Outcome`` per submitted task, in completion order. A failed attempt is
        retried up to ``retries`` times first. Ctrl-C cancels the remaining tasks and re-raises."""
        try:
            while self._running:
                handle, value, error = self._wait()
                key = self._running.pop(handle)
                if error is not None and self._attempts[key] <= self.retries:
                    self._launch(key)
                    continue
                self._tasks.pop(key)
                yield Outcome(key, value if error is None else None, error, self._attempts.pop(key))
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Cancel every task not yet reported (running ones are stopped where the backend can)."""
        for handle in list(self._running):
            self._stop(handle)
        self._running.clear()
        self._tasks.clear()
        self._attempts.clear()

    @abstractmethod
    def _start(self, fn: Callable, args: Tuple) -> Any:
        """Start one attempt; return a hashable handle."""

    @abstractmethod
    def _wait(self) -> Tuple[Any, Any, Optional[str]]:
        """Block until an attempt ends: ``(handle, value, formatted traceback or None)``."""

    def _stop(self, handle: Any) -> None:
        """Stop one running attempt (best effort)."""

    def close(self) -> None:
        """Release the workers; cancels what is still pending."""
        self.cancel()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """Tasks on this machine: inline (``jobs=1``) or in a pool of ``jobs`` spawned processes.

    Args:
        jobs: parallel worker processes; 1 runs every task in this process.
        retries: extra attempts for a failing task.
        threads: torch threads per worker; ``None``: ``os.cpu_count() // jobs`` (at least 1),
            and inline tasks (``jobs=1``) keep this process's setting.
    """

    def __init__(self, jobs: int = 1, retries: int = 0, threads: Optional[int] = None) -> None:
        super().__init__(retries)
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self._explicit_threads = threads is not None
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // jobs)
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._pool_of: Dict[cf.Future, cf.ProcessPoolExecutor] = {}
        """The pool each running future was submitted to (a dead worker breaks only its pool)."""
        self._inline: Dict[int, Tuple[Callable, Tuple]] = {}
        self._counter = 0

    def _start(self, fn: Callable, args: Tuple) -> Any:
        if self.jobs == 1:
            self._counter += 1
            self._inline[self._counter] = (fn, args)
            return self._counter
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_exit_with_parent, initargs=(os.getpid(),))
        try:
            future = self._pool.submit(_call, fn, args, self.threads)
        except cf.process.BrokenProcessPool:  # broken before its failed futures were collected
            self._restart_pool()
            return self._start(fn, args)
        self._pool_of[future] = self._pool
        return future

    def _wait(self) -> Tuple[Any, Any, Optional[str]]:
        if self.jobs == 1:
            handle = next(h for h in self._running if h in self._inline)
            fn, args = self._inline.pop(handle)
            before = _torch_threads() if self._explicit_threads else None
            try:
                return handle, _call(fn, args, self.threads if self._explicit_threads else None), None
            except Exception as err:  # reported as the task's failure; KeyboardInterrupt passes
                return handle, None, _format_error(err)
            finally:
                if before is not None:
                    _torch_threads(before)
        done, _ = cf.wait(list(self._running), return_when=cf.FIRST_COMPLETED)
        future = next(iter(done))
        pool = self._pool_of.pop(future, None)
        try:
            return future, future.result(), None
        except cf.process.BrokenProcessPool as err:  # a worker died (e.g. out of memory)
            if pool is self._pool:  # only the first broken future of a pool replaces it
                self._restart_pool()
            return future, None, f"worker process died: {err}"
        except Exception as err:
            return future, None, _format_error(err)

    def _restart_pool(self) -> None:
        """A dead worker breaks the whole pool: every attempt still running or queued in it fails
        (and is retried if it has attempts left) and later attempts get one fresh pool. The
        other broken futures of the old pool do not restart it again (``_wait`` compares pools),
        so the fresh pool holding their retries is never shut down under them."""
        old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def _stop(self, handle: Any) -> None:
        if isinstance(handle, cf.Future):
            handle.cancel()
            self._pool_of.pop(handle, None)
        else:
            self._inline.pop(handle, None)

    def cancel(self) -> None:
        busy = any(isinstance(h, cf.Future) and h.running() for h in self._running)
        super().cancel()
        if busy and self._pool is not None:
            # a running task cannot be cancelled through the pool: stop its worker processes
            # (the pool has no public way to do that before Python 3.14's terminate_workers)
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(f"executor 'ray' needs Ray, an optional extra: {RAY_EXTRA} "
                          "(or use the local executor: --executor local --jobs N)") from None
    return ray


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """``"ray://head:10001"`` / ``"head:6379"`` -> ``("head", port)``; ``None`` for ``"auto"``."""
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def _init_ray(ray: Any, address: Optional[str], timeout: float, init_kwargs: Dict[str, Any]) -> None:
    """``ray.init`` that gives up after ``timeout`` seconds instead of waiting for an address
    nobody answers (Ray itself retries for minutes)."""
    import socket

    hint = ("check --address (ray://HEAD:10001 for Ray Client, HEAD:6379 for a node of the cluster), that the "
            "cluster is up (ray status on its head) and that this machine can reach it")
    target = _host_port(address) if address else None
    if target is not None:
        try:
            socket.create_connection(target, timeout=timeout).close()
        except OSError as err:
            raise TimeoutError(f"no Ray cluster answers at {address} ({err.strerror or err}); {hint}") from None
    errors: list = []
    thread = threading.Thread(target=lambda: _capture(errors, ray.init, address=address, **init_kwargs), daemon=True)
    thread.start()
    thread.join(timeout if address else None)
    if thread.is_alive():
        raise TimeoutError(f"the Ray cluster at {address} did not accept the connection within {timeout:g} s; {hint}")
    if errors:
        raise errors[0]


def _capture(errors: list, fn: Callable, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except BaseException as err:  # re-raised in the caller's thread
        errors.append(err)


class RayExecutor(Executor):
    """Each task an independent Ray task with declared resources.

    Args:
        address: ``None`` starts a local Ray instance (or reuses one already started in this
            process, e.g. by ``ray.init(num_cpus=2)``); otherwise the cluster to connect to.
        num_cpus: CPUs per task (also its torch thread count).
        num_gpus: GPUs per task; a fraction (``0.25``) packs several tasks on one GPU.
        retries: extra attempts for a task that raised or whose worker died.
        shared_filesystem: whether workers see the driver's output directory. ``None``:
            True for a local instance, False for a remote cluster (then the final
            checkpoints are sent back to the driver with the results).
        connect_timeout: seconds to wait for the cluster at ``address`` to answer.
        init_kwargs: more ``ray.init`` arguments (``runtime_env``, ``namespace``...).

    Raises:
        ImportError: Ray is not installed (the message names the ``fxharden[ray]`` extra).
        TimeoutError: nobody answers at ``address`` within ``connect_timeout`` seconds.
    """

    def __init__(self, address: Optional[str] = None, num_cpus: float = 1, num_gpus: float = 0, retries: int = 2,
                 shared_filesystem: Optional[bool] = None, connect_timeout: float = 30.0, **init_kwargs: Any) -> None:
        super().__init__(retries)
        self._ray = ray = _import_ray()
        if num_cpus <= 0 or num_gpus < 0:
            raise ValueError(f"num_cpus must be > 0 and num_gpus >= 0, got {num_cpus} and {num_gpus}")
        self._owns = not ray.is_initialized()
        if self._owns:
            init_kwargs.setdefault("include_dashboard", False)
            init_kwargs.setdefault("log_to_driver", False)
            _init_ray(ray, address, connect_timeout, init_kwargs)
        self.shared_filesystem = address is None if shared_filesystem is None else shared_filesystem
        threads = max(1, int(num_cpus))
        self._remote = ray.remote(_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)
        self._threads = threads

    def _start(self, fn: Callable, args: Tuple) -> Any:
        return self._remote.remote(fn, args, self._threads)

    def _wait(self) -> Tuple[Any, Any, Optional[str]]:
        ray = self._ray
        ready, _ = ray.wait(list(self._running), num_returns=1)
        ref = ready[0]
        try:
            return ref, ray.get(ref), None
        except ray.exceptions.RayTaskError as err:  # the task raised: str(err) holds the remote traceback
            return ref, None, str(err)
        except ray.exceptions.RayError as err:  # worker died, node lost, object lost...
            return ref, None, f"{type(err).__name__}: {err}"

    def _stop(self, handle: Any) -> None:
        try:
            self._ray.cancel(handle, force=True)
        except Exception:  # already finished or gone: nothing to stop
            pass

    def close(self) -> None:
        super().close()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(kind: ExecutorKind = ExecutorKind.LOCAL, jobs: int = 1, address: Optional[str] = None,
                  retries: Optional[int] = None, num_gpus: float = 0, connect_timeout: float = 30.0) -> Executor:
    """The executor the CLI's ``--executor/--jobs/--address`` describe.

    ``local``: ``LocalExecutor(jobs)``. ``ray``: ``RayExecutor(address)`` with ``num_cpus``
    per task such that ``jobs`` tasks fill this machine's CPUs (local instance only).
    """
    kind = ExecutorKind(kind)
    if kind is ExecutorKind.LOCAL:
        if address is not None:
            raise ValueError("--address is only used with --executor ray")
        return LocalExecutor(jobs, retries=retries if retries is not None else 0)
    cpus = max(1, (os.cpu_count() or 1) // jobs) if address is None else 1
    return RayExecutor(address, num_cpus=cpus, num_gpus=num_gpus, retries=retries if retries is not None else 2,
                       connect_timeout=connect_timeout)
