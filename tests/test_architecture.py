"""The package's layers (docs/ARCHITECTURE.md): every module imports only from its own unit or from lower
layers, there is no import cycle, and function-local imports only defer heavy optional dependencies."""

import ast
import os
from typing import Dict, List, Set, Tuple

PACKAGE = "refsam_jax"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# Lowest first. A unit is a subpackage or a top-level module; units of one layer may not import each other.
LAYERS = (
    ("paths", "param_rules", "processes", "trees", "visualize", "porting"),
    ("sam", "text", "checkpoint"),
    ("model",),
    ("data",),
    ("inference",),
    ("segmenter",),
    ("evaluation",),
    ("train",),
    ("task", "sam_task"),
    ("configs",),
    ("cli",),
    ("predict", "evaluate", "sweep", "convert", "export"),
)
# What a function may import for itself: heavy dependencies that most uses never need.
DEFERRABLE = ("torch", "torchvision", "transformers", "segment_anything")


def layer_of() -> Dict[str, int]:
    return {unit: i for i, units in enumerate(LAYERS) for unit in units}


def package_modules() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
                if relative[-1] == "__init__":
                    relative = relative[:-1]
                modules[".".join(relative)] = os.path.join(folder, name)
    return modules


def imports_of(path: str, module: str) -> Tuple[List[Tuple[str, int, bool]], List[Tuple[str, int]]]:
    """(imported module, line, at module level) for every import of `path`, and its function-local imports."""
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith("__init__.py")
    found, local = [], []
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found += [(name, node.lineno, id(node) in module_level) for name in names]
        if id(node) not in module_level:
            local += [(name, node.lineno) for name in names]
    return found, local


def unit_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def resolve(name: str, modules: Dict[str, str]) -> str:
    """The package module `name` refers to (`a.b.c` may be the name `c` in module `a.b`), or ''."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name.startswith(PACKAGE + ".") else ""


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in package_modules()} - {""}
    assert units == set(layer_of()), f"units without a layer: {units - set(layer_of())}; " \
                                     f"layers naming no unit: {set(layer_of()) - units}"


def test_modules_import_only_their_unit_or_lower_layers():
    modules, layers = package_modules(), layer_of()
    violations = []
    for module, path in modules.items():
        unit = unit_of(module)
        if not unit:
            continue
        for name, line, _ in imports_of(path, module)[0]:
            target = resolve(name, modules)
            if target and unit_of(target) != unit and layers[unit_of(target)] >= layers[unit]:
                violations.append(f"{path}:{line}: {unit} (layer {layers[unit]}) imports {target} "
                                  f"(layer {layers[unit_of(target)]})")
    assert not violations, "\n".join(violations)


def test_no_import_cycle():
    modules = package_modules()
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _, _ in imports_of(path, module)[0]:
            target = resolve(name, modules)
            if target and target != module and not module.startswith(target + "."):  # a package's own __init__
                graph[module].add(target)
    state: Dict[str, int] = {}

    def visit(module: str, stack: List[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_function_local_imports_only_defer_heavy_optional_dependencies():
    modules = package_modules()
    offending = [f"{path}:{line}: {name}" for module, path in modules.items()
                 for name, line in imports_of(path, module)[1] if name.split(".")[0] not in DEFERRABLE]
    assert not offending, "\n".join(offending)


def test_the_checks_catch_an_upward_import(tmp_path):
    """The walk sees a lower layer importing a higher one (the test is not vacuous)."""
    path = tmp_path / "bad.py"
    path.write_text("import os\nfrom refsam_jax.train import loop\n\ndef f():\n    from refsam_jax import task\n")
    found, local = imports_of(str(path), "refsam_jax.sam.bad")
    modules = package_modules()
    targets = {resolve(name, modules) for name, _, _ in found} - {""}
    assert {"refsam_jax.train.loop", "refsam_jax.task"} <= targets
    assert [name for name, _ in local] == ["refsam_jax.task", "refsam_jax"]
    assert layer_of()["train"] > layer_of()["sam"]
