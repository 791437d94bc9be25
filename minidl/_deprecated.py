"""Old names kept working for a while: a module-level ``__getattr__`` (PEP 562) that returns
the new object under the old name with a ``DeprecationWarning`` saying what to use.

>>> import warnings, minidl.functional.math as m
>>> with warnings.catch_warnings(record=True) as w:
...     warnings.simplefilter("always")
...     m.Mul is m.MulFunction, str(w[0].message)
(True, 'minidl.functional.math.Mul is deprecated; use minidl.functional.math.MulFunction')
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def aliases(module: str, renamed: dict[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module`` serving each old name in ``renamed`` as the object
    that the new dotted path (``"pkg.mod.Name"``, or a bare name in ``module``) names."""

    def __getattr__(name: str) -> Any:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = renamed[name]
        where, _, attr = target.rpartition(".")
        where = where or module
        warnings.warn(f"{module}.{name} is deprecated; use {where}.{attr}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(where), attr)

    return __getattr__


def function_suffix(module: str) -> Callable[[str], Any]:
    """A ``__getattr__`` serving ``Name`` as ``NameFunction`` of ``module``: the autograd
    Function classes took the ``Function`` suffix (``Conv2d`` -> ``Conv2dFunction``, so that
    no op shares its name with an ``nn`` layer); the old names still work, with a warning."""

    def __getattr__(name: str) -> Any:
        new = f"{name}Function"
        if name.startswith("_") or new not in vars(importlib.import_module(module)):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} is deprecated; use {module}.{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new)

    return __getattr__
