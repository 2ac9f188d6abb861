"""Where a sweep's runs execute: one after another in the driver (:class:`LocalBackend`), in worker processes of this
machine (:class:`ProcessBackend`: several runs packed on one GPU box, no Ray needed) or on Ray (:class:`RayBackend`).

A backend only *runs* (recipe, seed) pairs and hands each finished run's record back to the driver as it finishes;
it never writes. :func:`hf_stable_ft.experiment.run_sweep` stays the one writer of ``DIR/runs.jsonl``: it validates
everything, takes the directory lock, plans the pairs left to run (finished ones skipped, failed ones retried),
starts the backend (so an unreachable cluster is refused before any run), then appends each record the backend
yields with the one record writer, whole line and fsync, and shows a progress line over runs with the running
count of degenerate runs. So whichever backend ran them, the same command resumes a killed sweep the same way:
records reach the file only through the driver, one whole line each, and a run the driver never received is run
again.

**Why Ray tasks and not Ray Tune trials.** A seed study is no search: every (recipe, seed) pair is fixed in advance
and every run is kept, the collapsed ones above all (they are what the study measures). Tune is built around a
search (a search space, a scheduler that stops or ranks trials, a "best" trial, per-trial checkpoints and
experiment state on storage); none of it is wanted here, and a Tune experiment keeps its own state beside
``runs.jsonl``, a second writer that a resumed sweep would have to reconcile. A plain task per run is what the job
is: it takes the shared data by reference from the object store, returns its record, and :func:`ray.wait` streams
the records back to the driver in the order runs finish. Ray retries a task whose worker process died
(``max_retries``) and gives its result once, so a retried run is recorded once; an exception inside a run is caught
in the task and returned as a ``failed`` record, so it is not retried and the sweep goes on.

**Shared data.** The tokenised datasets, the tokenizer, the model config and the pretrained state dict (the whole
:class:`~hf_stable_ft.experiment.PreparedTask`) are put into the object store once per sweep (:func:`ray.put`); each
task gets the reference, not a copy per submission. Memory-mapped datasets (loaded through the Hub cache) are
first copied into memory, since a node of a cluster has no access to the driver's cache files.

**Resources.** ``cpus_per_run`` CPUs (and that many torch threads: one by default, which makes a CPU run's scores
the same as the local backend's with one thread) and ``gpus_per_run`` GPUs per run; a fraction such as 0.25 packs
four small runs on one GPU (Ray sets ``CUDA_VISIBLE_DEVICES`` for each task). ``max_concurrent`` bounds the runs in
flight (by default as many as the cluster's resources allow).
"""

from __future__ import annotations

import logging
import math
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["BACKENDS", "LocalBackend", "ProcessBackend", "RayBackend", "SweepBackend", "make_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("local", "processes", "ray")

#: A run: ``run_fn(prepared, recipe, seed, output_dir, training, evaluations_per_run) -> record dict`` (the
#: signature of :func:`hf_stable_ft.experiment.run_single`). ``run_sweep`` hands its run function and its
#: failed-record builder to :meth:`SweepBackend.runs`, so this module never imports the experiment layer.
RunFn = Callable[..., dict]
#: ``failed_fn(prepared, recipe, seed, error, *, device=None, wall_time_s=None) -> record dict`` (the record of a run
#: that produced none: :func:`hf_stable_ft.experiment.failed_record`).
FailedFn = Callable[..., dict]


class SweepBackend:
    """Runs the pairs of a sweep and yields ``(recipe, seed, record)`` as each run finishes.

    ``start()`` connects to where the runs execute (called by ``run_sweep`` before the first run, so a backend that
    cannot run anything is refused before any record is written); ``close()`` lets go of it.
    """

    name = "?"

    def start(self) -> None:
        """Connect; raise before any run if the backend cannot run anything."""

    def close(self) -> None:
        """Release what :meth:`start` took."""

    def runs(self, prepared: Any, pairs: Sequence[tuple[Any, int]], training: dict[str, Any] | None,
             evaluations_per_run: int, *, run_fn: RunFn, failed_fn: FailedFn) -> Iterator[tuple[Any, int, dict]]:
        """Run every pair with ``run_fn`` (a backend's own ``run_fn``, given at construction, wins); a run that
        produces no record is recorded with ``failed_fn``."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def _run_in_temp_dir(run_fn: RunFn, prepared, recipe, seed, training, evaluations_per_run) -> dict:
    with tempfile.TemporaryDirectory(prefix="hf_stable_ft_run_") as run_dir:
        return run_fn(prepared, recipe, seed, run_dir, training, evaluations_per_run)


class LocalBackend(SweepBackend):
    """One run after another in the driver's process: what ``run_sweep`` has always done (same records, same
    order). ``run_fn`` replaces the run function ``run_sweep`` hands over."""

    name = "local"

    def __init__(self, run_fn: RunFn | None = None):
        self.run_fn = run_fn

    def runs(self, prepared, pairs, training, evaluations_per_run, *, run_fn, failed_fn):
        for recipe, seed in pairs:
            yield recipe, seed, _run_in_temp_dir(self.run_fn or run_fn, prepared, recipe, seed, training,
                                                 evaluations_per_run)


# --------------------------------------------------------------------------------------- worker processes


def _exit_when_orphaned(driver: int, interval_s: float = 1.0) -> None:
    """A :class:`ProcessBackend` worker's watchdog thread: end the worker at once when its driver is gone (killed,
    even with SIGKILL, which leaves no chance to stop the workers) — mid-run too, since nobody would record that run
    and it would hold a core or the GPU for as long as it trains. The worker is re-parented then, so its parent pid
    changes."""
    import os

    while os.getppid() == driver:
        time.sleep(interval_s)
    os._exit(1)


def _process_worker(jobs, results, threads, run_fn, failed_fn):
    """A :class:`ProcessBackend` worker: take the pickled shared data first, then ``(job_id, recipe, seed, training,
    evaluations)`` until ``None``; put ``(job_id, record)``.

    The shared data comes through the job queue, not as a process argument: ``spawn`` writes a process's arguments
    into its pipe and the driver blocks until the new process has read them, which (for ~90 MB of datasets and
    weights, read while Python, torch and transformers are imported) made the workers start one after another —
    about 11 s each on the GPU machine, 160 s before 14 packed runs began."""
    import multiprocessing
    import os
    import threading

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the driver's pid as the spawn recorded it, not os.getppid(): a driver killed before this line is caught too
    threading.Thread(target=_exit_when_orphaned, args=(multiprocessing.parent_process().pid,), daemon=True,
                     name="hf_stable_ft_orphan_watch").start()
    import torch

    torch.set_num_threads(threads)
    prepared = pickle.loads(jobs.get())  # an error here ends the worker: the driver replaces it, then records failed
    while True:
        job = jobs.get()
        if job is None:
            return
        job_id, recipe, seed, training, evaluations_per_run = job
        started = time.time()
        try:
            record = _run_in_temp_dir(run_fn, prepared, recipe, seed, training, evaluations_per_run)
        except Exception as exc:  # noqa: BLE001 - one broken run must not end the sweep
            record = failed_fn(prepared, recipe, seed, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                               device=f"worker process {os.getpid()}", wall_time_s=round(time.time() - started, 2))
        results.put((job_id, record))


class ProcessBackend(SweepBackend):
    """``workers`` runs at once in worker processes of this machine (``spawn``), without Ray: several small runs
    packed on one GPU box, or both cores of a laptop with one thread each.

    Each worker gets the shared data and weights once, when it starts (pickled once, through its job queue, so the
    workers start side by side), and runs one pair at a time with ``threads_per_run`` torch threads (one by
    default: a CPU run then gives the local backend's scores). On a GPU every worker shares the visible GPU(s).
    Records go back to the driver as runs finish, and the driver writes them. A worker process that dies mid-run
    (killed, out of memory) is replaced, and its run is run again, at most ``max_retries`` times; after that it is
    recorded as failed, once. An exception inside a run is a ``failed`` record, not a retry. A worker whose driver
    is gone (killed) ends within a second, mid-run: nobody would record that run. ``run_fn`` replaces
    :func:`hf_stable_ft.experiment.run_single` (it must be importable in a fresh process).
    """

    name = "processes"

    def __init__(self, workers: int = 2, *, threads_per_run: int = 1, max_retries: int = 2,
                 run_fn: RunFn | None = None):
        for flag, value, low in (("--max-concurrent", workers, 1), ("--cpus-per-run", threads_per_run, 1),
                                 ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{flag} {value!r} is invalid; allowed: an integer >= {low}")
        self.workers = workers
        self.threads_per_run = threads_per_run
        self.max_retries = max_retries
        self.run_fn = run_fn
        self.retried: list[str] = []  # run ids run again after their worker died

    def describe(self) -> str:
        return f"processes ({self.workers} worker(s), {self.threads_per_run} thread(s) per run)"

    def runs(self, prepared, pairs, training, evaluations_per_run, *, run_fn, failed_fn):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        run_fn = self.run_fn or run_fn
        pending = iter(pairs)  # pulled one at a time: a caller's generator may stop handing out pairs
        workers: dict[int, tuple[Any, Any]] = {}  # slot -> (process, its job queue)
        holding: dict[int, int | None] = {}  # slot -> job id it runs
        jobs: dict[int, tuple[Any, int]] = {}
        attempts: dict[int, int] = {}
        done: set[int] = set()
        next_id = 0

        queues = []  # every worker's job queue, replaced workers' too

        def start(slot):
            queue = context.Queue()
            queues.append(queue)
            process = context.Process(target=_process_worker, name=f"hf_stable_ft_worker_{slot}", daemon=True,
                                      args=(queue, results, self.threads_per_run, run_fn, failed_fn))
            process.start()
            queue.put(shared)  # written by the queue's feeder thread: the next worker starts meanwhile
            workers[slot], holding[slot] = (process, queue), None

        def assign(slot, job_id):
            recipe, seed = jobs[job_id]
            attempts[job_id] = attempts.get(job_id, 0) + 1
            holding[slot] = job_id
            workers[slot][1].put((job_id, recipe, seed, training, evaluations_per_run))

        retry: list[int] = []
        exhausted = False
        try:
            try:
                shared = pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)  # once, for every worker
                for slot in range(self.workers):
                    start(slot)
            except (pickle.PicklingError, AttributeError, TypeError) as error:
                raise TypeError(f"--backend processes sends the sweep's shared data (and a Trainer factory) to worker "
                                f"processes with pickle, which failed: {error}. Define make_trainer at module level "
                                "(not a lambda or a function inside a function), or use the local or ray "
                                "backend") from error
            while True:
                for slot in workers:
                    if holding[slot] is not None:
                        continue
                    if retry:
                        assign(slot, retry.pop(0))
                    elif not exhausted:
                        pair = next(pending, None)
                        if pair is None:
                            exhausted = True
                            continue
                        jobs[next_id] = pair
                        assign(slot, next_id)
                        next_id += 1
                if exhausted and not retry and all(job is None for job in holding.values()):
                    return
                try:
                    job_id, record = results.get(timeout=1.0)
                except Exception:  # queue.Empty: look after the workers
                    job_id = None
                if job_id is not None:
                    for slot, held in holding.items():
                        if held == job_id:
                            holding[slot] = None
                    if job_id not in done:  # a late duplicate of a retried run is dropped: recorded once
                        done.add(job_id)
                        recipe, seed = jobs[job_id]
                        yield recipe, seed, record
                    continue
                for slot, (process, _) in list(workers.items()):
                    if process.is_alive():
                        continue
                    lost, code = holding[slot], process.exitcode
                    start(slot)
                    if lost is None or lost in done:
                        continue
                    recipe, seed = jobs[lost]
                    run_id = f"{recipe.label}/seed={seed}"
                    if attempts[lost] <= self.max_retries:
                        logger.warning("the worker running %s died (exit code %s): running it again", run_id, code)
                        self.retried.append(run_id)
                        retry.append(lost)
                    else:
                        done.add(lost)
                        yield recipe, seed, failed_fn(
                            prepared, recipe, seed, f"the worker process died (exit code {code}) in each of "
                            f"{attempts[lost]} attempts ({self.max_retries} retries)", device="worker process")
        finally:
            for process, queue in workers.values():
                if process.is_alive():
                    queue.put(None)
            for process, _ in workers.values():
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
            # a worker that died (or was killed above) before reading the shared data left it in its queue's feeder
            # thread, blocked on a pipe whose read end this process holds; Python would join that thread at exit
            for queue in queues:
                queue.cancel_join_thread()
                queue.close()


# --------------------------------------------------------------------------------------------------------- Ray


def _ray_task(prepared, recipe, seed, training, evaluations_per_run, threads, run_fn, failed_fn):
    """The body of one Ray task: one run, with ``threads`` torch threads, in a temporary directory of its node.
    An exception is returned as a failed record (not raised: Ray would not retry it anyway, and the sweep goes on)."""
    import torch

    torch.set_num_threads(threads)
    started = time.time()
    try:
        return _run_in_temp_dir(run_fn, prepared, recipe, seed, training, evaluations_per_run)
    except Exception as exc:  # noqa: BLE001 - one broken run must not end the sweep
        return failed_fn(prepared, recipe, seed, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                             device=f"ray node {socket.gethostname()}", wall_time_s=round(time.time() - started, 2))


def _in_memory(prepared):
    """``prepared`` with every dataset held in memory (a memory-mapped one refers to the driver's cache files)."""
    import copy

    datasets = prepared.datasets
    moved = {}
    for split in list(datasets.keys()):
        data = datasets[split]
        if getattr(data, "cache_files", None):
            data = data.flatten_indices(keep_in_memory=True)
            if data.cache_files:
                raise RuntimeError(f"the {split} split could not be copied into memory for the Ray object store")
        moved[split] = data
    if all(moved[s] is datasets[s] for s in moved):
        return prepared
    copied = copy.copy(prepared)
    copied.datasets = type(datasets)(moved) if not isinstance(datasets, dict) else moved
    return copied


def _check_address(address: str) -> None:
    """``HOST:PORT`` reachable (a TCP connection within 5 s): ``ray.init`` itself waits minutes on a dead address."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as error:
        raise ConnectionError(f"--address {address}: cannot reach a Ray cluster there ({error}); start one "
                              f"(`ray start --head --port {port}`) or pass the address its head printed") from None


def _ray_module():
    try:
        import ray
    except ImportError:
        raise ImportError("--backend ray needs Ray: pip install 'hf_stable_ft[ray]'") from None
    return ray


def _check_address_form(address: str | None) -> None:
    if address is None or address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r} is invalid; allowed: auto or HOST:PORT (the head's GCS address, "
                         "e.g. 10.0.0.1:6379)")


class RayBackend(SweepBackend):
    """Each (recipe, seed) is one Ray task; records stream back to the driver as runs finish (see the module).

    ``address``: ``None`` starts a Ray instance on this machine; ``"auto"`` joins the one running here
    (``ray start``); ``HOST:PORT`` joins a cluster's head. ``cpus_per_run`` (an integer >= 1, also the run's torch
    threads), ``gpus_per_run`` (>= 0; a fraction below 1 packs runs on one GPU, above 1 a whole number),
    ``max_concurrent`` (runs in flight; None: as the resources allow), ``max_retries`` (how often a run whose
    worker process died is run again). ``init_kwargs`` go to :func:`ray.init` (e.g. ``num_cpus``, ``_temp_dir``,
    ``runtime_env``). ``run_fn`` replaces :func:`hf_stable_ft.experiment.run_single` (it must be importable or
    picklable on the workers). If Ray is already initialised in this process, that instance is used and left
    running.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, cpus_per_run: int = 1, gpus_per_run: float = 0.0,
                 max_concurrent: int | None = None, max_retries: int = 2, init_kwargs: dict[str, Any] | None = None,
                 run_fn: RunFn | None = None):
        _check_address_form(address)
        if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
            raise ValueError(f"--cpus-per-run {cpus_per_run!r} is invalid; allowed: an integer >= 1")
        if (isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, (int, float))
                or not math.isfinite(gpus_per_run) or gpus_per_run < 0
                or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run))):
            raise ValueError(f"--gpus-per-run {gpus_per_run!r} is invalid; allowed: 0, a fraction of one GPU (e.g. "
                             "0.25 packs 4 runs on a GPU) or a whole number of GPUs")
        if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                           or max_concurrent < 1):
            raise ValueError(f"--max-concurrent {max_concurrent!r} is invalid; allowed: an integer >= 1")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} is invalid; allowed: an integer >= 0")
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = float(gpus_per_run)
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self.run_fn = run_fn
        self._owns = False
        self._ray = None
        self.puts = 0  # objects this backend put into the object store (one per sweep)

    def describe(self) -> str:
        where = self.address or "a Ray instance on this machine"
        return (f"ray ({where}; {self.cpus_per_run} CPU, {self.gpus_per_run:g} GPU per run"
                + (f", at most {self.max_concurrent} at once" if self.max_concurrent else "") + ")")

    def start(self) -> None:
        ray = _ray_module()
        self._ray = ray
        if ray.is_initialized():
            if self.address is not None:
                logger.warning("Ray is already initialised in this process: the sweep runs on that instance, not on "
                               "--address %s", self.address)
        else:
            if self.address not in (None, "auto"):
                _check_address(self.address)
            kwargs = {"include_dashboard": False, **self.init_kwargs}
            try:
                ray.init(address=self.address or "local", **kwargs)
            except ConnectionError as error:
                raise ConnectionError(f"--address {self.address}: no Ray cluster to join ({' '.join(str(error).split())})"
                                      "; start one with `ray start --head`, or leave --address out to start Ray on "
                                      "this machine") from None
            self._owns = True
        try:
            self._check_resources(ray.cluster_resources())
        except BaseException:
            self.close()
            raise
        logger.info("sweep runs on %s", self.describe())

    def _check_resources(self, resources: dict[str, float]) -> None:
        """A run that no node can ever hold would wait forever: refuse it before any run."""
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if self.cpus_per_run > cpus:
            raise ValueError(f"--cpus-per-run {self.cpus_per_run}: the Ray cluster has {cpus:g} CPU(s) in all, so no "
                             f"run could start; pass --cpus-per-run {max(1, int(cpus))} or less")
        if self.gpus_per_run > gpus:
            raise ValueError(f"--gpus-per-run {self.gpus_per_run:g}: the Ray cluster has {gpus:g} GPU(s), so no run "
                             "could start; pass --gpus-per-run 0 to train on CPUs, or join a cluster with GPUs")

    def close(self) -> None:
        if self._owns and self._ray is not None:
            self._ray.shutdown()
        self._owns = False

    def runs(self, prepared, pairs, training, evaluations_per_run, *, run_fn, failed_fn):
        ray = self._ray
        if ray is None:
            raise RuntimeError("RayBackend.runs before start()")
        shared = ray.put(_in_memory(prepared))  # once per sweep: every task gets the reference
        self.puts += 1
        task = ray.remote(_ray_task).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
            retry_exceptions=False, name="hf_stable_ft_run")
        pending = iter(pairs)  # pulled as slots free up: a caller's generator may stop handing out pairs
        in_flight: dict[Any, tuple[Any, int]] = {}
        limit = self.max_concurrent or math.inf
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < limit:
                    pair = next(pending, None)
                    if pair is None:
                        exhausted = True
                        break
                    recipe, seed = pair
                    ref = task.remote(shared, recipe, seed, training, evaluations_per_run, self.cpus_per_run,
                                      self.run_fn or run_fn, failed_fn)
                    in_flight[ref] = (recipe, seed)
                if not in_flight:
                    return
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    recipe, seed = in_flight.pop(ref)
                    yield recipe, seed, self._result(ref, prepared, recipe, seed, failed_fn)
        finally:
            for ref in in_flight:  # the driver stops (an error, Ctrl-C): the runs it will not record are cancelled
                try:
                    ray.cancel(ref, force=True)
                except Exception as error:  # noqa: BLE001 - already finished or gone: nothing to cancel
                    logger.debug("could not cancel %s: %s", ref, error)

    def _result(self, ref, prepared, recipe, seed, failed_fn) -> dict:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as error:  # the worker died more often than max_retries, or the task was lost
            reason = " ".join(str(error).split())[:2000]
            logger.warning("run %s/seed=%s failed on Ray after %d retries: %s", recipe.label, seed, self.max_retries,
                           reason[:300])
            return failed_fn(prepared, recipe, seed, f"{type(error).__name__} (after {self.max_retries} "
                                 f"retries): {reason}", device="ray")


def make_backend(name: str = "local", *, address: str | None = None, cpus_per_run: int | None = None,
                 gpus_per_run: float | None = None, max_concurrent: int | None = None, **ray_kwargs) -> SweepBackend:
    """The backend the CLI's ``--backend`` names, its flags validated (ValueError naming the flag)."""
    if name not in BACKENDS:
        raise ValueError(f"--backend {name!r} is invalid; allowed: {', '.join(BACKENDS)}")
    if name == "local":
        given = [flag for flag, value in (("--address", address), ("--cpus-per-run", cpus_per_run),
                                          ("--gpus-per-run", gpus_per_run), ("--max-concurrent", max_concurrent))
                 if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for --backend ray or processes (the local backend runs one run at "
                             "a time in this process); add --backend processes|ray or leave the flag out")
        return LocalBackend()
    if name == "processes":
        given = [flag for flag, value in (("--address", address), ("--gpus-per-run", gpus_per_run)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for --backend ray only (worker processes share this machine's "
                             "GPUs); leave the flag out, or use --backend ray")
        return ProcessBackend(2 if max_concurrent is None else max_concurrent,
                              threads_per_run=1 if cpus_per_run is None else cpus_per_run)
    return RayBackend(address, cpus_per_run=1 if cpus_per_run is None else cpus_per_run,
                      gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run, max_concurrent=max_concurrent,
                      **ray_kwargs)
