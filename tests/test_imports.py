"""The import graph of the root modules: every `import` of a project module, at the top of a file or inside a
function (a lazy import still ties two modules together), read from the source without running it. Imports under
`if TYPE_CHECKING:` only name types for the hints and never run, so they do not count."""
import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = {path.stem: path for path in ROOT.glob("*.py")}


def is_type_checking_block(node):
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_modules(path):
    """The project modules that the file at `path` imports anywhere in it, outside `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hints_only = {id(inner) for node in ast.walk(tree) if is_type_checking_block(node)
                  for statement in node.body for inner in ast.walk(statement)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return (names & MODULES.keys()) - {path.stem}


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def test_the_graph_sees_top_level_and_function_level_imports():
    assert {"transformer_config", "decoder", "module"} <= GRAPH["transformer_lm"]   # at the top of the file
    assert "torch_peer" in GRAPH["bench"]                               # only inside bench.py's functions
    assert "transformer_lm" not in GRAPH["sparse_attention"]            # only under `if TYPE_CHECKING:`


def test_no_two_modules_import_each_other_even_lazily():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    assert set(order) == set(MODULES)


@pytest.mark.parametrize("module, below", [
    ("transformer_config", set(MODULES) - {"transformer_config"}),  # the settings import no other project module
    ("data", {"transformer_lm", "decoder", "attention"}),      # data needs IGNORE_INDEX, not the model
    ("hf_gpt2", {"transformer_lm"}),                           # the model imports the format, not the reverse
    ("checkpoint", {"transformer_lm"}),                        # likewise its own checkpoint format
    ("transformer_lm", {"sparse_attention"}),                  # spans are reached through the Module hooks
])
def test_module_does_not_depend_on(module, below):
    assert not GRAPH[module] & below
