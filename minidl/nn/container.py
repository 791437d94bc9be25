"""Containers: ``Sequential`` (a chain of layers, Keras-style) and ``ModuleList``.

Children are registered under their index as name (``"0"``, ``"1"``, ...), so parameter
names read ``"3.weight"`` like PyTorch's; passing an ``OrderedDict`` names them instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from minidl.nn import fusion
from minidl.nn.module import Module


class _ModuleSequence(Module):
    """What ``Sequential`` and ``ModuleList`` share: children in order, indexable (negative
    indices too), sliceable, iterable, appendable. Each child is registered under a name
    (its index unless given), so its parameters appear in ``parameters()`` and
    ``state_dict()`` as ``"3.weight"``."""

    def _add_all(self, modules: Iterable[Module], what: str) -> None:
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"{type(self).__name__}: {what} {i} must be a Module, got "
                                f"{type(m).__name__}")
            self.add_module(str(len(self)), m)

    def _index(self, idx: int) -> str:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"{type(self).__name__}: index {idx} is out of range for {n} "
                             "modules")
        return list(self._modules)[idx % n]

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return self._slice(list(self._modules.items())[idx])
        return self._modules[self._index(idx)]

    def _slice(self, items: list[tuple[str, Module]]) -> _ModuleSequence:
        raise NotImplementedError

    def __setitem__(self, idx: int, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: can only assign a Module, got "
                            f"{type(module).__name__}")
        self.add_module(self._index(idx), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> _ModuleSequence:
        """Add ``module`` at the end (named by its index); return self."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.append: expected a Module, got "
                            f"{type(module).__name__}")
        self.add_module(str(len(self)), module)
        return self


class Sequential(_ModuleSequence):
    """Run modules one after the other; indexable, sliceable, iterable, appendable.

    Children are named by index, or by the keys of an ``OrderedDict`` given alone. A
    slice is a new ``Sequential`` of the same module objects, keeping their names.

    Shape:
        - Input: whatever the first module takes.
        - Output: what the last module returns.

    >>> import minidl
    >>> nn = minidl.nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> len(model), type(model[1]).__name__, model(minidl.ones(3, 4)).shape
    (3, 'ReLU', (3, 2))
    """

    def __init__(self, *modules: Module | OrderedDict) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            self._add_all(modules, "argument")

    def _slice(self, items: list[tuple[str, Module]]) -> Sequential:
        return type(self)(OrderedDict(items))

    def add(self, module: Module) -> Sequential:
        """Keras spelling of ``append``."""
        return self.append(module)

    def forward(self, x: Any) -> Any:
        # Conv2d -> (ReLU) -> MaxPool2d runs as one fused op; see minidl.nn.fusion.
        return fusion.run(list(self._modules.values()), x)


class ModuleList(_ModuleSequence):
    """A list of modules whose parameters are registered (a plain list would hide them).

    It has no ``forward``: the owner decides how the modules are called.

    >>> import minidl
    >>> layers = minidl.nn.ModuleList([minidl.nn.Linear(2, 2) for _ in range(3)])
    >>> len(layers), len(list(layers.parameters()))
    (3, 6)
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        self._add_all(modules or (), "item")

    def _slice(self, items: list[tuple[str, Module]]) -> ModuleList:
        return ModuleList(m for _, m in items)

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Append each of ``modules``; return self."""
        for m in modules:
            self.append(m)
        return self
