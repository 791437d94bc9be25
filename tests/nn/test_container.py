"""Sequential and ModuleList share one base: indexing, slicing, assignment, append."""

from __future__ import annotations

import pytest

from minidl import nn


@pytest.mark.parametrize("cls", [nn.Sequential, nn.ModuleList])
def test_shared_sequence_behaviour(cls) -> None:
    a, b, c = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3)
    seq = cls([a, b, c]) if cls is nn.ModuleList else cls(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c]
    assert seq[-1] is c and seq[0] is a
    part = seq[1:]
    assert type(part) is cls and list(part) == [b, c]
    d = nn.Tanh()
    seq[1] = d
    assert list(seq) == [a, d, c]  # replaced in place, order kept
    with pytest.raises(TypeError, match=f"{cls.__name__}: can only assign a Module"):
        seq[0] = "relu"
    with pytest.raises(IndexError, match=f"{cls.__name__}: index 3 is out of range for 3"):
        seq[3]
    with pytest.raises(TypeError, match=f"{cls.__name__}.append: expected a Module"):
        seq.append(3)
    assert seq.append(nn.Identity()) is seq and len(seq) == 4
    assert [k for k, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                      "2.bias"]


def test_sequential_slice_keeps_names_and_modulelist_rejects_non_modules() -> None:
    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    assert [k for k, _ in seq[2:].named_parameters()] == ["2.weight", "2.bias"]
    with pytest.raises(TypeError, match="ModuleList: item 1 must be a Module"):
        nn.ModuleList([nn.ReLU(), "x"])
