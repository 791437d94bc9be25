"""The op test table is complete, and its harness catches what it claims to.

Every public op in ``minidl.functional.__all__`` must be exercised by at least one
``OpCase`` in the ``CASES`` list of a module here (matched by function object, so aliases
such as ``clamp``/``cat`` count as their target), or be listed in ``EXEMPT`` with the reason
and the test that covers it instead. The second half plants bugs in tiny ops and checks
that ``check_case`` fails on each, with a message that says which check failed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import OpCase, away_from_zero, check_case

import minidl.functional as F
from minidl import Function, Tensor
from minidl.autograd import is_grad_enabled
from minidl.gradcheck import GradcheckError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# name -> (why it has no OpCase, "path::test" that covers it instead)
EXEMPT = {
    "argmax": ("not differentiable: returns int64 indices, so there is no gradient to check",
               "tests/functional/test_reduce.py::test_argmax"),
}


def _case_modules() -> list:
    # pytest's default (prepend) import mode already put this folder on sys.path and
    # imported these modules under their file names; importing them again by that name
    # returns the same module objects (and works when this file runs alone).
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    names = [p.stem for p in sorted(HERE.glob("test_*.py")) if p.stem != Path(__file__).stem]
    return [importlib.import_module(n) for n in names]


def _all_cases() -> list[tuple[str, OpCase]]:
    return [(m.__name__, c) for m in _case_modules() for c in getattr(m, "CASES", [])]


def _public() -> dict[str, object]:
    return {name: getattr(F, name) for name in F.__all__}


def test_every_public_op_has_a_case() -> None:
    exercised = {id(op) for _, case in _all_cases() for op in case.ops}
    missing = sorted(n for n, f in _public().items() if id(f) not in exercised and n not in EXEMPT)
    assert not missing, (f"public ops without an OpCase: {missing}; add a case to a CASES "
                         "table in tests/functional (or, if it truly cannot have one, an "
                         "EXEMPT entry with the reason and the test that covers it)")


def test_every_case_names_the_public_ops_it_exercises() -> None:
    public = {id(f) for f in _public().values()}
    anonymous = [f"{mod}::{case.id}" for mod, case in _all_cases()
                 if not case.ops or any(id(op) not in public for op in case.ops)]
    assert not anonymous, (f"these cases exercise no public op: {anonymous}; pass "
                           "op=F.<name> (or a tuple) naming the minidl.functional function")


def test_cases_tables_are_well_formed_and_run() -> None:
    for m in _case_modules():
        cases = getattr(m, "CASES", None)
        if cases is None:
            continue
        assert all(isinstance(c, OpCase) for c in cases), f"{m.__name__}.CASES: not OpCases"
        ids = [c.id for c in cases]
        assert len(ids) == len(set(ids)), f"{m.__name__}: repeated case ids"
        # some test of the module is parametrized over this very list
        runners = [fn for fn in vars(m).values() if callable(fn)
                   for mark in getattr(fn, "pytestmark", [])
                   if mark.name == "parametrize" and mark.args[1] is cases]
        assert runners, f"{m.__name__}: no test is parametrized over CASES"


def test_exemptions_are_needed_and_name_a_covering_test() -> None:
    exercised = {id(op) for _, case in _all_cases() for op in case.ops}
    for name, (reason, test) in EXEMPT.items():
        assert name in F.__all__, f"EXEMPT[{name!r}]: not a public op"
        assert id(getattr(F, name)) not in exercised, f"EXEMPT[{name!r}]: it has a case now"
        assert reason, f"EXEMPT[{name!r}]: give the reason"
        path, func = test.split("::")
        assert f"def {func}(" in (ROOT / path).read_text(), f"EXEMPT[{name!r}]: no {test}"


# ---------------------------------------------------------------------------------------
# the harness catches planted bugs


class _ReluInPlace(Function):
    """Right values and gradient, but forward overwrites its input."""

    def forward(self, x):
        np.maximum(x, 0, out=x)
        self.save_for_backward(x > 0)
        return x.copy()

    def backward(self, gy):
        (mask,) = self.saved
        return gy * Tensor(mask.astype(gy.dtype))


class _DoubleAssumesContiguous(Function):
    """2x, but forward reads memory as if the input were C-contiguous."""

    def forward(self, x):
        strides = np.empty(x.shape, x.dtype).strides
        return np.lib.stride_tricks.as_strided(x, x.shape, strides) * 2.0

    def backward(self, gy):
        return gy * 2.0


class _DoubleCountsCalls(Function):
    """2x, but backward keeps state between calls: a second backward is wrong."""

    def forward(self, x):
        self.calls = 0
        return x * 2.0

    def backward(self, gy):
        self.calls += 1
        return gy * (2.0 * self.calls)


class _DoubleGraphBranchWrong(Function):
    """2x, but the branch that records a graph (create_graph=True) returns 3x."""

    def forward(self, x):
        return x * 2.0

    def backward(self, gy):
        return gy * (3.0 if is_grad_enabled() else 2.0)


class _ScaleOffByTenPpm(Function):
    """2x with a backward wrong by a relative 1e-5: what dropping eps = 1e-5 from batch
    norm's inverse std does at unit variance (it passed gradcheck's old rtol of 1e-3)."""

    def forward(self, x):
        return x * 2.0

    def backward(self, gy):
        return gy * (2.0 * (1 + 1e-5))


def _relu(x):
    return np.maximum(x, 0)


def _double(x):
    return 2 * x


@pytest.mark.parametrize("op,reference,message", [
    (_ReluInPlace, _relu, "forward modified input 0"),
    (_DoubleAssumesContiguous, _double, "output with strided inputs 0"),
    (_DoubleCountsCalls, _double, "second backward gave a different gradient 0"),
    (_DoubleGraphBranchWrong, _double, "create_graph=True gradient 0"),
], ids=["mutates_input", "ignores_strides", "stateful_backward", "create_graph_branch"])
def test_check_case_catches(op, reference, message) -> None:
    case = OpCase("planted", op.apply, reference, [away_from_zero(3, 4)])
    with pytest.raises(AssertionError, match=message):
        check_case(case)


def test_check_case_catches_a_ten_ppm_gradient_error() -> None:
    with pytest.raises(GradcheckError, match="gradcheck failed"):
        check_case(OpCase("planted", _ScaleOffByTenPpm.apply, _double, [(3, 4)]))
