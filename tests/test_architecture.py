"""The shape of the house, checked on the source rather than by eye.

minidl is layered: the engine (``autograd``) knows nothing of the ops, the ops
(``functional``) nothing of layers, layers (``nn``) nothing of the trainer. These tests read
every module's imports with ``ast`` (top-level *and* inside functions; ``if TYPE_CHECKING:``
blocks are skipped, they never run) and fail on an import cycle or on an import that runs
from a lower layer to a higher one.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import minidl
from minidl import nn

PACKAGE = Path(minidl.__file__).parent

# Lower number = lower layer. A module may import modules of its own layer or below.
LAYERS: list[tuple[int, str]] = [
    (0, "minidl.backend"), (0, "minidl.random"), (0, "minidl._fileio"), (0, "minidl._deprecated"),
    (0, "minidl.kernels._threads"),
    (1, "minidl.kernels"),
    (2, "minidl.autograd"),
    (3, "minidl.functional"),
    (4, "minidl.amp"), (4, "minidl.gradcheck"), (4, "minidl.serialization"), (4, "minidl.io"),
    (5, "minidl.nn"),
    (6, "minidl.optim"),
    (7, "minidl.data"),
    (8, "minidl.plot"), (8, "minidl.models"), (8, "minidl.onnx"), (8, "minidl.distributed"),
    (8, "minidl.privacy"),
    (9, "minidl.train"),
    (10, "minidl"),
]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("minidl",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _resolve(name: str) -> str:
    """The innermost minidl module that ``name`` (a module or a name in one) refers to."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported minidl module, line) for every import that can run in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((_resolve(a.name), node.lineno) for a in node.names
                         if a.name.split(".")[0] == "minidl")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "minidl":
                for a in node.names:
                    full = f"{base}.{a.name}"
                    found.append((full if full in MODULES else _resolve(base), node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return [(m, line) for m, line in found if m != module]


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int:
    best = max((p for _, p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return next(rank for rank, p in LAYERS if p == best)


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)  # raises StopIteration/ValueError for a module outside every layer


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    bad = [f"{m}:{line} imports {target} (layer {_layer(m)} -> {_layer(target)})"
           for m, edges in GRAPH.items() for target, line in edges
           if _layer(target) > _layer(m)]
    assert not bad, "\n".join(bad)


def test_import_graph_has_no_cycle():
    # Iterative depth-first search with colours: grey = on the current path.
    colour: dict[str, int] = dict.fromkeys(GRAPH, 0)
    for start in GRAPH:
        if colour[start]:
            continue
        stack = [(start, iter(GRAPH[start]))]
        path = [start]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                colour[node] = 2
                continue
            target = nxt[0]
            if colour[target] == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if colour[target] == 0:
                colour[target] = 1
                stack.append((target, iter(GRAPH[target])))
                path.append(target)


def test_the_engine_imports_nothing_above_it():
    assert {m for m, _ in GRAPH["minidl.autograd"]} <= {"minidl.backend", "minidl.random"}


def test_the_data_package_uses_absolute_imports():
    """One import style across the package: ``from minidl.x import y``, never relative."""
    relative = [f"{m}:{node.lineno}" for m, path in MODULES.items()
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, relative


def _function_classes() -> list[type]:
    seen, todo = [], [minidl.Function]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("minidl.") and sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def test_autograd_functions_do_not_share_names_with_layers():
    layers = {name for name, obj in vars(nn).items()
              if inspect.isclass(obj) and issubclass(obj, nn.Module)}
    functions = _function_classes()
    assert len(functions) > 30  # every op module was imported
    clashes = sorted(f.__name__ for f in functions if f.__name__ in layers)
    assert not clashes, clashes
    # Every op's class says what it is, and grad_fn reads like PyTorch's.
    assert all(f.__name__.endswith("Function") for f in functions), [
        f.__name__ for f in functions if not f.__name__.endswith("Function")]
    x = minidl.tensor([1.0], requires_grad=True)
    assert repr(nn.functional.relu(x)) == "tensor([1.], grad_fn=<ReLUBackward>)"


def test_renamed_public_names_still_work_with_a_deprecation_warning():
    import minidl.amp
    import minidl.functional.conv
    import minidl.functional.math

    with pytest.warns(DeprecationWarning, match="functional.conv.Conv2d is deprecated; use "
                                                "minidl.functional.conv.Conv2dFunction"):
        assert minidl.functional.conv.Conv2d is minidl.functional.conv.Conv2dFunction
    with pytest.warns(DeprecationWarning, match="amp.upper is deprecated"):
        assert minidl.amp.upper is minidl.functional.math.upper
    with pytest.raises(AttributeError, match="has no attribute 'Conv3d'"):
        minidl.functional.conv.Conv3d  # noqa: B018
