"""Run a two-trial Ray Tune search with StableTrainer in a fresh process (for test_user_intent): Ray pickles the
Trainer, and state earlier tests leave in the pytest process (weak references) must not leak into it.

Usage: python ray_search_worker.py WORK_DIR  — writes WORK_DIR/record.jsonl (one line per trial)."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402
from test_user_intent import _search_trainer  # noqa: E402

torch.set_num_threads(1)
work = Path(sys.argv[1])
trainer = _search_trainer(work, work / "record.jsonl")
temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # AF_UNIX socket paths must stay under 107 bytes
ray.init(num_cpus=1, include_dashboard=False, address="local", log_to_driver=False, _temp_dir=temp_dir,
         runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}})
try:
    trainer.hyperparameter_search(
        hp_space=lambda _: {"reinit_layers": tune.grid_search([2, 0]), "mixout_prob": tune.grid_search([0.2])},
        backend="ray", n_trials=1, direction="minimize", resources_per_trial={"cpu": 1},
        storage_path=str(work / "ray_results"))
finally:
    ray.shutdown()
