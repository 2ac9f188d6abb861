"""The package layout (README "Architecture"): no import cycles, and the Trainer plugin core never imports the
experiment layer (GLUE data and metrics, sweeps, reports, the CLI). Imports are read from the source with ``ast``,
function-level ones included, so a lazy import cannot hide a cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_stable_ft"

#: The experiment layer: what builds on the plugin to run studies. Everything else is the plugin core.
EXPERIMENT_LAYER = {"data", "tasks", "metrics", "records", "recipe_variants", "experiment", "sweep_backends", "report",
                    "trainer_sweep", "demo", "cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The hf_stable_ft modules ``path`` imports (relative or absolute), as dotted names inside the package."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("hf_stable_ft"):
                target = node.module[len("hf_stable_ft"):].lstrip(".")
            else:
                continue
            candidates = [target] + [f"{target}.{alias.name}" if target else alias.name for alias in node.names]
            found.update(c for c in candidates if c in MODULES)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hf_stable_ft."):
                    found.add(alias.name[len("hf_stable_ft."):])
    found.discard(name)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_no_import_cycles():
    # A package's __init__ re-exports its submodules; a submodule importing a sibling is not a cycle through it.
    edges = {name: {t for t in targets if not (t == "" or (name.startswith(t + ".") and t in MODULES))}
             for name, targets in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(m or "hf_stable_ft" for m in cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_plugin_core_never_imports_the_experiment_layer():
    core = [name for name in MODULES if _top(name) not in EXPERIMENT_LAYER and name != ""]
    offenders = {name: sorted(t for t in GRAPH[name] if _top(t) in EXPERIMENT_LAYER) for name in core}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_checker_sees_lazy_and_relative_imports():
    # A checker that found nothing would pass the tests above vacuously.
    assert "diagnostics.degenerate" in GRAPH["diagnostics.from_args"]
    assert "stats" in GRAPH["diagnostics.degenerate"]  # `from ..stats import ...`
    assert "experiment" in GRAPH["cli"]  # imported inside main()
    assert "callback" in GRAPH["trainer"]


def test_every_public_name_resolves_and_the_plugin_imports_alone():
    import subprocess
    import sys

    script = (
        "import sys, hf_stable_ft\n"
        f"layer = {sorted(EXPERIMENT_LAYER)!r}\n"
        "loaded = [m for m in layer if 'hf_stable_ft.' + m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "missing = [n for n in hf_stable_ft.__all__ if getattr(hf_stable_ft, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert 'hf_stable_ft.experiment' in sys.modules  # loaded on first use\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
