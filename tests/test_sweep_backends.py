"""Issue 16 part 2: sweeps on Ray (hf_stable_ft.sweep_backends), with one writer and the faults a cluster has.

Every Ray here is a local one on this machine (``ray.init(num_cpus=2)``, or one ``ray start --head`` joined by
``127.0.0.1:PORT``), started with a short temp dir (AF_UNIX socket paths < 107 bytes) and shut down at the end;
every wait is bounded.

* The same (recipe, seed) on CPU with one thread gives the same record scores on the local and the Ray backend;
  the prepared data and weights go into the object store once per sweep; the progress line counts degenerate runs.
* A run that raises is recorded as failed and the sweep goes on; a worker killed mid-run is retried and recorded
  once; a worker that keeps dying is recorded failed once after the bounded retries; a driver killed mid-sweep is
  resumed by the same command with nothing lost or duplicated.
* CLI: bad --backend / --address / --cpus-per-run / --gpus-per-run / --max-concurrent values are one line naming
  the flag, exit 2, nothing written; an unreachable cluster is a clear error before any run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from scale_fixtures import free_port
from sweep_fixtures import fast_flags, fast_training, make_tiny, sweep_argv, sweep_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)  # every Ray wait below is bounded too; this bounds a hung Ray itself

import torch

from hf_stable_ft import cli, experiment
from hf_stable_ft.experiment import SweepConfig, read_finished_runs, run_sweep
from hf_stable_ft.sweep_backends import LocalBackend, ProcessBackend, RayBackend, make_backend

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAST = fast_training(4)
FAST_FLAGS = fast_flags(4)
ENV_VARS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def _config(tiny, recipes=("stock",), seeds=(0,), **training) -> SweepConfig:
    return sweep_config(tiny, recipes, seeds, evaluations=2, steps=4, **training)


def _argv(tiny, output, *extra, recipes="stock", seeds="1"):
    return sweep_argv(tiny, output, *extra, recipes=recipes, seeds=seeds, evaluations=2, max_steps=4)


def _ray_init_kwargs() -> dict:
    return {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
            "_temp_dir": tempfile.mkdtemp(prefix="ray", dir="/tmp"),  # AF_UNIX paths < 107 bytes
            "runtime_env": {"env_vars": ENV_VARS}}


def _uses(entry: Path, temp_dir: str) -> bool:
    """Whether the process ``entry`` (/proc/PID) belongs to the Ray of ``temp_dir``: its command line names it or
    it holds a file under it (Ray's agents rename themselves ``ray::...``, but keep their log files open)."""
    try:
        if temp_dir in (entry / "cmdline").read_bytes().decode(errors="replace"):
            return True
        if (entry / "stat").read_text().split(") ", 1)[1].split()[0] == "Z":
            return False  # a zombie: already dead
        for fd in (entry / "fd").iterdir():
            try:
                if os.readlink(fd).startswith(temp_dir):
                    return True
            except OSError:
                continue
    except (OSError, IndexError):
        return False
    return False


def _ray_processes(temp_dir: str) -> list[int]:
    """Pids of the live processes of the Ray whose temp dir is ``temp_dir``."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and int(entry.name) != os.getpid() and _uses(entry, temp_dir)]


def _kill_ray_of(temp_dir: str, timeout: float = 30) -> None:
    """Kill (by pid) what is left of the Ray this test started in ``temp_dir``, wait until it is gone, and remove
    the temp dir."""
    deadline = time.monotonic() + timeout
    while (pids := _ray_processes(temp_dir)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    shutil.rmtree(temp_dir, ignore_errors=True)


_MODULE_RAY: dict = {}


@pytest.fixture
def local_ray():
    """A local Ray with 2 CPUs, started once for the module (again if a test shut it down)."""
    if not ray.is_initialized():
        kwargs = _ray_init_kwargs()
        ray.init(address="local", **kwargs)
        _MODULE_RAY["temp_dir"] = kwargs["_temp_dir"]
    yield ray


@pytest.fixture(scope="module", autouse=True)
def _shutdown_ray_at_the_end():
    yield
    if ray.is_initialized():
        ray.shutdown()
    if "temp_dir" in _MODULE_RAY:
        _kill_ray_of(_MODULE_RAY["temp_dir"])


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


SCORES = ("status", "eval_history", "best_validation", "best_step", "test_at_best_validation", "final_validation",
          "final_test", "train_loss", "global_step", "degenerate", "nonfinite_loss_step", "majority_baseline",
          "constant_prediction_loss", "sweep_settings")


# ------------------------------------------------------------------ run functions the Ray workers call


def raise_for_seed(bad_seed, prepared, recipe, seed, run_dir, training, evaluations):
    """A run function whose run of ``bad_seed`` raises before training (a bug outside the training loop)."""
    if seed == bad_seed:
        raise RuntimeError(f"boom: run {recipe.label}/seed={seed} cannot start")
    return experiment.run_single(prepared, recipe, seed, run_dir, training, evaluations)


def _killed_in_training(prepared, recipe, seed, run_dir, training, evaluations):
    """run_single whose worker process SIGKILLs itself at the first training forward pass (mid-run)."""
    real = experiment._fresh_model

    def fresh_model(prepared, run_seed):
        net = real(prepared, run_seed)

        def die(module, inputs, output):
            if module.training:
                os.kill(os.getpid(), signal.SIGKILL)
            return output

        net.classifier.register_forward_hook(die)
        return net

    experiment._fresh_model = fresh_model
    try:
        return experiment.run_single(prepared, recipe, seed, run_dir, training, evaluations)
    finally:
        experiment._fresh_model = real


def kill_worker(marker_dir, victim_seed, times, prepared, recipe, seed, run_dir, training, evaluations):
    """The first ``times`` attempts of ``victim_seed``'s run die mid-training (their worker is SIGKILLed); each
    attempt leaves ``marker_dir/attempt-<seed>-<n>`` with its pid."""
    if seed == victim_seed:
        attempt = len(list(Path(marker_dir).glob(f"attempt-{seed}-*"))) + 1
        (Path(marker_dir) / f"attempt-{seed}-{attempt}").write_text(str(os.getpid()))
        if attempt <= times:
            return _killed_in_training(prepared, recipe, seed, run_dir, training, evaluations)
    return experiment.run_single(prepared, recipe, seed, run_dir, training, evaluations)


def block_unless_seed_zero(prepared, recipe, seed, run_dir, training, evaluations):
    """Seed 0 runs; every other run hangs (until its driver is killed)."""
    if seed != 0:
        time.sleep(600)
    return experiment.run_single(prepared, recipe, seed, run_dir, training, evaluations)


# ------------------------------------------------------------------ CLI validation (no Ray started)


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture
def no_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "run_single", lambda *a, **k: calls.append(a) or pytest.fail("a run started"))
    monkeypatch.setattr(experiment, "prepare_task", lambda *a, **k: pytest.fail("the data were loaded"))
    return calls


@pytest.mark.parametrize("extra, flag", [
    (["--backend", "dask"], "--backend"),
    (["--backend", "ray", "--gpus-per-run", "1.5"], "--gpus-per-run"),
    (["--backend", "ray", "--gpus-per-run", "-0.5"], "--gpus-per-run"),
    (["--backend", "ray", "--gpus-per-run", "half"], "--gpus-per-run"),
    (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run"),
    (["--backend", "ray", "--max-concurrent", "x"], "--max-concurrent"),
    (["--backend", "ray", "--address", "nowhere"], "--address"),
    (["--backend", "ray", "--address", "127.0.0.1:70000"], "--address"),
    (["--cpus-per-run", "2"], "--cpus-per-run"),  # a Ray flag with the local backend
    (["--address", "auto"], "--address"),
    (["--backend", "processes", "--gpus-per-run", "0.5"], "--gpus-per-run"),  # worker processes share the GPUs
    (["--backend", "processes", "--address", "auto"], "--address"),
    (["--backend", "processes", "--max-concurrent", "0"], "--max-concurrent"),
])
def test_bad_backend_flags_are_one_line_naming_the_flag_exit_2_and_nothing_written(extra, flag, tiny, tmp_path,
                                                                                   capsys, no_runs):
    out = tmp_path / "sweep"
    line = _cli_error(_argv(tiny, out, *extra), capsys)
    assert flag in line
    assert not out.exists() and no_runs == []


def test_backend_objects_validate_their_values():
    assert isinstance(make_backend("local"), LocalBackend)
    backend = make_backend("ray", address="10.0.0.1:6379", cpus_per_run=2, gpus_per_run=0.25, max_concurrent=4)
    assert (backend.address, backend.cpus_per_run, backend.gpus_per_run, backend.max_concurrent) == (
        "10.0.0.1:6379", 2, 0.25, 4)
    assert make_backend("ray", gpus_per_run=2).gpus_per_run == 2.0
    for bad in ({"cpus_per_run": 1.5}, {"gpus_per_run": float("nan")}, {"max_concurrent": 0}, {"max_retries": -1}):
        with pytest.raises(ValueError, match="invalid"):
            RayBackend(**bad)


def test_an_unreachable_cluster_is_a_clear_error_before_any_run(tiny, tmp_path, capsys, monkeypatch):
    if ray.is_initialized():  # a Ray of this process would be used instead of the address
        ray.shutdown()
    calls = []
    monkeypatch.setattr(experiment, "run_single", lambda *a, **k: calls.append(a))
    port = free_port()  # nothing listens there
    out = tmp_path / "sweep"
    started = time.monotonic()
    line = _cli_error(_argv(tiny, out, "--backend", "ray", "--address", f"127.0.0.1:{port}"), capsys)
    assert time.monotonic() - started < 60
    assert f"--address 127.0.0.1:{port}" in line and "cannot reach a Ray cluster" in line and "ray start" in line
    assert calls == [] and not (out / "runs.jsonl").exists() and not ray.is_initialized()


# ------------------------------------------------------------------ same records, one put, progress


def test_ray_and_local_give_the_same_scores_and_share_the_data_once(tiny, tmp_path, local_ray, one_thread,
                                                                     monkeypatch, capsys):
    config = _config(tiny, recipes=("stock", "devlin2019"), seeds=(0, 1))
    local = read_finished_runs(run_sweep(config, tmp_path / "local", progress=False, backend=LocalBackend()))

    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(type(value).__name__) or real_put(value, **kw))
    backend = RayBackend(cpus_per_run=1, max_concurrent=2)
    path = run_sweep(config, tmp_path / "ray", progress=True, backend=backend)
    progress = capsys.readouterr().err
    assert puts == ["PreparedTask"] and backend.puts == 1  # the data and the weights once, not once per run
    assert ray.is_initialized()  # a Ray this process had started is left running

    remote = read_finished_runs(path)
    assert sorted(remote) == sorted(local) == ["devlin2019/seed=0", "devlin2019/seed=1", "stock/seed=0",
                                               "stock/seed=1"]
    assert len(_lines(path)) == 4  # one line per run
    for run_id in local:
        assert local[run_id]["status"] == "finished", local[run_id].get("error")
        for key in SCORES:
            assert remote[run_id].get(key) == local[run_id].get(key), (run_id, key)
        assert remote[run_id]["settings"]["seed"] == local[run_id]["settings"]["seed"]
    # the seeds really differ (the comparison is not between constants)
    assert local["stock/seed=0"]["train_loss"] != local["stock/seed=1"]["train_loss"]
    degenerate = sum(bool(r["degenerate"]) for r in remote.values())
    assert f"degenerate {degenerate}/4" in progress


def test_a_trainer_factory_sweep_on_ray_gives_the_local_records_and_puts_the_factory_once(tiny, tmp_path, local_ray,
                                                                                          one_thread, monkeypatch):
    from sweep_fixtures import CliTrainerFactory

    from hf_stable_ft import run_trainer_sweep
    from hf_stable_ft.experiment import prepare_task

    make_trainer = CliTrainerFactory(prepare_task(_config(tiny)))
    kwargs = dict(metric="accuracy", recipes=["stock", "devlin2019"], seeds=[0, 1], training=FAST,
                  evaluations_per_run=2, name="RTE", progress=False)
    local = read_finished_runs(run_trainer_sweep(make_trainer, tmp_path / "local", **kwargs))
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(type(value).__name__) or real_put(value, **kw))
    remote = read_finished_runs(run_trainer_sweep(make_trainer, tmp_path / "ray", backend=RayBackend(max_concurrent=2),
                                                  **kwargs))
    assert puts == ["TrainerFactoryTask"]  # the factory and the data it holds, once
    assert sorted(remote) == sorted(local) and len(local) == 4
    for run_id, record in local.items():
        assert record["status"] == "finished", record.get("error")
        for key in SCORES:
            assert remote[run_id].get(key) == record.get(key), (run_id, key)


# ------------------------------------------------------------------ worker processes (no Ray)


def test_worker_processes_give_the_local_records(tiny, tmp_path, one_thread):
    config = _config(tiny, recipes=("stock", "devlin2019"), seeds=(0, 1))
    local = read_finished_runs(run_sweep(config, tmp_path / "local", progress=False, backend=LocalBackend()))
    backend = ProcessBackend(2)
    path = run_sweep(config, tmp_path / "processes", progress=False, backend=backend)
    remote = read_finished_runs(path)
    assert sorted(remote) == sorted(local) and len(_lines(path)) == 4 and backend.retried == []
    for run_id, record in local.items():
        assert record["status"] == "finished", record.get("error")
        for key in SCORES:
            assert remote[run_id].get(key) == record.get(key), (run_id, key)


class MeetWhenUnpickled:
    """Shared data whose unpickling in a worker waits (at most ``timeout`` s) until ``count`` workers are unpickling
    it, then writes ``met`` or ``alone`` to ``folder/<pid>``: the workers met only if none had to finish first."""

    def __init__(self, folder: str, count: int, timeout: float):
        self.folder, self.count, self.timeout = folder, count, timeout

    def __reduce__(self):
        return (_meet, (self.folder, self.count, self.timeout))


def _meet(folder, count, timeout):
    arrived = Path(folder) / "arrived"
    arrived.mkdir(exist_ok=True)
    (arrived / str(os.getpid())).touch()
    deadline = time.time() + timeout
    while len(list(arrived.iterdir())) < count and time.time() < deadline:
        time.sleep(0.05)
    met = len(list(arrived.iterdir())) >= count
    (Path(folder) / str(os.getpid())).write_text("met" if met else "alone")
    return MeetWhenUnpickled(folder, count, timeout)


def echo_run(prepared, recipe, seed, run_dir, training, evaluations):
    return {"run_id": f"{recipe}/seed={seed}", "status": "finished"}


def test_worker_processes_receive_the_shared_data_at_the_same_time_not_one_after_another(tmp_path):
    """Reported on the GPU machine (2026-12-04): 14 workers took ~160 s before the first run started, 4 took 46 s —
    each worker got the shared data (datasets and weights, ~90 MB) as a process argument, and ``spawn`` writes that
    into the new process's pipe, blocking the driver until the worker has read it: the workers' start-ups (Python,
    torch, transformers, unpickling) ran one after another. Here the data is 2 MB after an object whose unpickling
    waits for the other workers to be unpickling too: they all get there only if no worker has to finish first."""
    folder = tmp_path / "meet"
    folder.mkdir()
    shared = (MeetWhenUnpickled(str(folder), 3, timeout=60), b"x" * 2_000_000)
    backend = ProcessBackend(3, run_fn=echo_run)
    records = list(backend.runs(shared, [("r", seed) for seed in range(3)], None, 1, run_fn=echo_run,
                                failed_fn=None))
    assert sorted(record["run_id"] for _, _, record in records) == ["r/seed=0", "r/seed=1", "r/seed=2"]
    outcomes = [f.read_text() for f in folder.iterdir() if f.is_file()]
    assert outcomes == ["met"] * 3, outcomes


def test_a_killed_worker_process_is_replaced_and_its_run_recorded_once(tiny, tmp_path):
    out, markers = tmp_path / "sweep", tmp_path / "markers"
    markers.mkdir()
    backend = ProcessBackend(2, max_retries=1, run_fn=functools.partial(kill_worker, str(markers), 1, 1))
    run_sweep(_config(tiny, seeds=(0, 1, 2)), out, progress=False, backend=backend)
    assert sorted(p.name for p in markers.iterdir()) == ["attempt-1-1", "attempt-1-2"]
    assert (markers / "attempt-1-1").read_text() != (markers / "attempt-1-2").read_text()  # in a new process
    lines = _lines(out / "runs.jsonl")
    assert sorted(r["run_id"] for r in lines) == ["stock/seed=0", "stock/seed=1", "stock/seed=2"]
    assert all(r["status"] == "finished" for r in lines) and backend.retried == ["stock/seed=1"]


def test_a_worker_process_that_keeps_dying_or_a_run_that_raises_is_recorded_failed_once(tiny, tmp_path):
    out, markers = tmp_path / "sweep", tmp_path / "markers"
    markers.mkdir()
    run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False,
              backend=ProcessBackend(2, max_retries=1, run_fn=functools.partial(kill_worker, str(markers), 1, 5)))
    records = {r["run_id"]: r for r in _lines(out / "runs.jsonl")}
    assert len(records) == 2 and records["stock/seed=0"]["status"] == "finished"
    assert records["stock/seed=1"]["status"] == "failed" and "died" in records["stock/seed=1"]["error"]
    assert len(list(markers.iterdir())) == 2  # the first try and one retry
    raised = tmp_path / "raised"
    run_sweep(_config(tiny, seeds=(0, 1)), raised, progress=False,
              backend=ProcessBackend(2, run_fn=functools.partial(raise_for_seed, 1)))
    records = {r["run_id"]: r for r in _lines(raised / "runs.jsonl")}
    assert records["stock/seed=1"]["status"] == "failed" and "boom" in records["stock/seed=1"]["error"]
    assert records["stock/seed=0"]["status"] == "finished"


def test_stop_at_starts_no_run_after_it_and_the_next_call_continues_seed_major(tiny, tmp_path):
    config = _config(tiny, recipes=("stock", "devlin2019"), seeds=(0, 1, 2))
    started = []

    def counting(prepared, recipe, seed, run_dir, training, evaluations):
        started.append((recipe.label, seed))
        return experiment.run_single(prepared, recipe, seed, run_dir, training, evaluations)

    path = run_sweep(config, tmp_path / "s", progress=False, backend=LocalBackend(run_fn=counting),
                     stop_at=time.time() - 1)
    assert started == [] and not path.exists()
    run_sweep(config, tmp_path / "s", progress=False, backend=LocalBackend(run_fn=counting))
    assert started == [("stock", 0), ("devlin2019", 0), ("stock", 1), ("devlin2019", 1), ("stock", 2),
                       ("devlin2019", 2)]  # seed-major: a time box leaves balanced counts


# ------------------------------------------------------------------ faults


def test_a_run_that_raises_is_recorded_failed_and_the_sweep_goes_on(tiny, tmp_path, local_ray):
    out = tmp_path / "sweep"
    config = _config(tiny, seeds=(0, 1, 2))
    run_sweep(config, out, progress=False, backend=RayBackend(run_fn=functools.partial(raise_for_seed, 1)))
    records = read_finished_runs(out / "runs.jsonl")
    assert {run_id: r["status"] for run_id, r in records.items()} == {
        "stock/seed=0": "finished", "stock/seed=1": "failed", "stock/seed=2": "finished"}
    failed = records["stock/seed=1"]
    assert "RuntimeError: boom: run stock/seed=1 cannot start" in failed["error"]
    assert failed["degenerate"] is None and failed["task"] == "RTE" and failed["sweep_settings"]["recipe"]["label"] == "stock"
    # the same command again retries only the failed pair
    run_sweep(config, out, progress=False, backend=RayBackend())
    lines = _lines(out / "runs.jsonl")
    assert [(r["run_id"], r["status"]) for r in lines][-1] == ("stock/seed=1", "finished") and len(lines) == 4


def test_a_worker_killed_mid_run_is_retried_and_recorded_once(tiny, tmp_path, local_ray):
    out, markers = tmp_path / "sweep", tmp_path / "markers"
    markers.mkdir()
    run_sweep(_config(tiny, seeds=(0, 1, 2)), out, progress=False,
              backend=RayBackend(max_retries=2, run_fn=functools.partial(kill_worker, str(markers), 1, 1)))
    attempts = sorted(p.name for p in markers.iterdir())
    assert attempts == ["attempt-1-1", "attempt-1-2"]  # killed once, run again
    assert (markers / "attempt-1-1").read_text() != (markers / "attempt-1-2").read_text()  # in a new worker
    lines = _lines(out / "runs.jsonl")
    assert sorted(r["run_id"] for r in lines) == ["stock/seed=0", "stock/seed=1", "stock/seed=2"]  # once each
    assert all(r["status"] == "finished" for r in lines)


def test_a_worker_that_keeps_dying_is_recorded_failed_once_after_the_bounded_retries(tiny, tmp_path, local_ray):
    out, markers = tmp_path / "sweep", tmp_path / "markers"
    markers.mkdir()
    run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False,
              backend=RayBackend(max_retries=1, run_fn=functools.partial(kill_worker, str(markers), 1, 99)))
    assert len(list(markers.iterdir())) == 2  # the first attempt and one retry, no more
    lines = _lines(out / "runs.jsonl")
    assert sorted((r["run_id"], r["status"]) for r in lines) == [("stock/seed=0", "finished"),
                                                                ("stock/seed=1", "failed")]
    failed = next(r for r in lines if r["status"] == "failed")
    assert "after 1 retries" in failed["error"] and "Worker" in failed["error"]


DRIVER = """
import functools, json, sys
sys.path.insert(0, {tests!r})
import ray
import test_sweep_backends as t
from hf_stable_ft.experiment import SweepConfig, run_sweep
from hf_stable_ft.sweep_backends import RayBackend

config = SweepConfig(**json.loads(sys.argv[1]))
ray.init(address="local", **json.loads(sys.argv[2]))
run_sweep(config, sys.argv[3], progress=False, backend=RayBackend(run_fn=t.block_unless_seed_zero))
"""


def test_a_killed_driver_is_resumed_by_the_same_command_nothing_lost_or_duplicated(tiny, tmp_path, local_ray):
    out = tmp_path / "sweep"
    config = _config(tiny, seeds=(0, 1, 2))
    fields = {k: getattr(config, k) for k in ("task", "model", "recipes", "seeds", "data_dir", "evaluations_per_run",
                                              "training")}
    kwargs = _ray_init_kwargs()
    env = dict(os.environ, **ENV_VARS)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(tests=str(TESTS)), json.dumps(fields),
                               json.dumps(kwargs), str(out)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "runs.jsonl").exists() and (out / "runs.jsonl").read_text().count("\n") >= 1):
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the driver recorded no run in time"
            time.sleep(0.5)
        time.sleep(1)  # the other runs are in flight, blocked
        assert (out / ".sweep.lock").exists()
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
        _kill_ray_of(kwargs["_temp_dir"])
    before = _lines(out / "runs.jsonl")
    assert [r["run_id"] for r in before] == ["stock/seed=0"]

    run_sweep(config, out, progress=False, backend=RayBackend())  # the same command (the lock is stale)
    after = _lines(out / "runs.jsonl")
    assert after[0] == before[0]  # kept as it was
    assert sorted(r["run_id"] for r in after) == ["stock/seed=0", "stock/seed=1", "stock/seed=2"]  # no duplicate
    assert all(r["status"] == "finished" for r in after) and not (out / ".sweep.lock").exists()


# ------------------------------------------------------------------ a real cluster joined by address


def test_a_sweep_joins_a_ray_head_started_with_ray_start_by_its_address(tiny, tmp_path):
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("no ray CLI beside this Python")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # its own token (Ray 2.5x authenticates by token; ~/.ray/auth_token is shared with any other Ray of this user)
    env = dict(os.environ, **ENV_VARS, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    out = tmp_path / "sweep"
    try:
        subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                       env=env, check=True, capture_output=True, timeout=180)
        sweep = subprocess.run([sys.executable, "-m", "hf_stable_ft.cli",
                                *_argv(tiny, out, "--backend", "ray", "--address", f"127.0.0.1:{port}", seeds="2")],
                               check=False, env=env, capture_output=True, text=True, timeout=300)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert "runs recorded in" in sweep.stdout
        records = read_finished_runs(out / "runs.jsonl")
        assert sorted(records) == ["stock/seed=0", "stock/seed=1"]
        assert all(r["status"] == "finished" for r in records.values())
        assert "degenerate" in sweep.stderr  # the progress line
        # a run that asks for more than the cluster has is refused before any run
        refused = subprocess.run([sys.executable, "-m", "hf_stable_ft.cli",
                                  *_argv(tiny, tmp_path / "big", "--backend", "ray", "--address", f"127.0.0.1:{port}",
                                         "--cpus-per-run", "4")], check=False, env=env, capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode == 2 and "--cpus-per-run 4: the Ray cluster has 1 CPU" in refused.stderr
        assert not (tmp_path / "big" / "runs.jsonl").exists()
    finally:
        # stop this test's cluster only (`ray stop` would stop every Ray on the machine): its processes by pid
        _kill_ray_of(temp_dir)
    assert _ray_processes(temp_dir) == []


_DEAD_WORKERS_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from hf_stable_ft.sweep_backends import ProcessBackend
from test_sweep_backends import echo_run

def failed(prepared, recipe, seed, error, **kw):
    return {{"run_id": f"{{recipe}}/seed={{seed}}", "status": "failed"}}

if __name__ == "__main__":
    backend = ProcessBackend(2, max_retries=1, run_fn=echo_run)
    backend.threads_per_run = "not a number"  # each worker dies before it reads the shared data
    from hf_stable_ft.experiment import parse_recipe
    records = list(backend.runs(b"x" * 2_000_000, [(parse_recipe("stock"), 0)], None, 1, run_fn=echo_run,
                                failed_fn=failed))
    print(records[0][2]["status"], flush=True)
"""


def test_the_driver_exits_when_workers_died_before_reading_the_shared_data(tmp_path):
    """Reported by CI (2026-12-04): pytest printed its summary and never exited. A worker that died (or was killed at
    the end of a sweep) before reading the shared data left it in its queue's feeder thread, blocked on a pipe whose
    read end the driver still held, and Python joins that thread at exit. The driver now lets its queues go."""
    script = tmp_path / "dead_workers.py"
    script.write_text(_DEAD_WORKERS_SCRIPT.format(tests=str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "failed"


def sleep_in_run(folder, prepared, recipe, seed, run_dir, training, evaluations):
    Path(folder, "worker.pid").write_text(str(os.getpid()))
    time.sleep(600)
    return {"run_id": f"{recipe}/seed={seed}", "status": "finished"}


_ORPHAN_SCRIPT = """
import functools, sys
sys.path.insert(0, {tests!r})
from hf_stable_ft.sweep_backends import ProcessBackend
from test_sweep_backends import sleep_in_run

if __name__ == "__main__":
    run = functools.partial(sleep_in_run, {folder!r})
    list(ProcessBackend(1, run_fn=run).runs(b"data", [("r", 0)], None, 1, run_fn=run, failed_fn=None))
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_process_stops_mid_run_when_its_driver_is_killed(tmp_path):
    """Seen on a 2-core VM (2026-12-07): a sweep driver stopped with `kill` (SIGTERM, no clean-up) left its two
    worker processes training to the end of their runs — 17 minutes on both cores — while the next sweep started,
    slowing it twofold. Nobody records those runs, so a worker whose driver is gone now ends within seconds."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(tmp_path)))
    driver = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid_file, worker = tmp_path / "worker.pid", None
    try:
        deadline = time.time() + 120
        while not pid_file.exists() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert pid_file.exists(), "the worker never started its run"
        time.sleep(0.2)
        worker = int(pid_file.read_text())
        driver.kill()
        driver.wait(timeout=30)
        deadline = time.time() + 30
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker went on with a run nobody will record"
    finally:
        if driver.poll() is None:
            driver.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
