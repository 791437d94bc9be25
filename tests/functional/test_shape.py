"""Shape ops and indexing: reshape, transpose/permute, flatten, squeeze/unsqueeze, getitem
(basic and advanced), concatenate/stack, pad."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import OpCase, check_case

import minidl
import minidl.functional as F

_IDX = np.array([2, 0, 2, 2, 1])  # repeated indices: gradients must accumulate
_MASK = np.array([[True, False, True, True], [False, False, True, False],
                  [True, True, False, False]])

CASES = [
    OpCase("reshape", lambda x: x.reshape(4, -1), lambda x: x.reshape(4, -1), [(2, 3, 2)],
           gradgrad=True, op=F.reshape),
    OpCase("reshape_tuple", lambda x: F.reshape(x, (6,)), lambda x: x.reshape(6), [(2, 3)],
           op=F.reshape),
    OpCase("view_0d", lambda x: x.view(1, 1), lambda x: x.reshape(1, 1), [()], op=F.reshape),
    OpCase("transpose", lambda x: F.transpose(x, 0, 2), lambda x: np.swapaxes(x, 0, 2),
           [(2, 3, 4)], gradgrad=True, op=F.transpose),
    OpCase("transpose_default", F.transpose, lambda x: np.swapaxes(x, -2, -1), [(2, 3, 4)]),
    OpCase("T", lambda x: x.T, lambda x: x.T, [(2, 3, 4)], op=F.permute),
    OpCase("mT", lambda x: x.mT, lambda x: np.swapaxes(x, -1, -2), [(2, 3, 4)], op=F.transpose),
    OpCase("permute", lambda x: x.permute(2, 0, 1), lambda x: x.transpose(2, 0, 1),
           [(2, 3, 4)], gradgrad=True, op=F.permute),
    OpCase("permute_neg", lambda x: F.permute(x, (-1, 0, -2)), lambda x: x.transpose(2, 0, 1),
           [(2, 3, 4)], op=F.permute),
    OpCase("flatten", F.flatten, lambda x: x.reshape(-1), [(2, 3, 4)]),
    OpCase("flatten_1", lambda x: x.flatten(1), lambda x: x.reshape(2, -1), [(2, 3, 4)],
           op=F.flatten),
    OpCase("flatten_mid", lambda x: F.flatten(x, 1, 2), lambda x: x.reshape(2, 12, 1),
           [(2, 3, 4, 1)], op=F.flatten),
    OpCase("squeeze", lambda x: x.squeeze(), np.squeeze, [(1, 3, 1)], op=F.squeeze),
    OpCase("squeeze_axis", lambda x: x.squeeze(-1), lambda x: x[..., 0], [(1, 3, 1)], op=F.squeeze),
    OpCase("unsqueeze", lambda x: x.unsqueeze(1), lambda x: x[:, None], [(2, 3)], op=F.unsqueeze),
    OpCase("unsqueeze_neg", lambda x: F.unsqueeze(x, -1), lambda x: x[..., None], [(2, 3)],
           op=F.unsqueeze),
    # basic indexing
    OpCase("getitem_int", lambda x: x[1], lambda x: x[1], [(3, 4)], gradgrad=True, op=F.getitem),
    OpCase("getitem_neg_int", lambda x: x[-1, 2], lambda x: x[-1, 2], [(3, 4)], op=F.getitem),
    OpCase("getitem_slice", lambda x: x[1:, ::2], lambda x: x[1:, ::2], [(3, 4)], op=F.getitem),
    OpCase("getitem_neg_step", lambda x: x[::-1, 1:3], lambda x: x[::-1, 1:3], [(3, 4)],
           op=F.getitem),
    OpCase("getitem_ellipsis_none", lambda x: x[..., None, 0], lambda x: x[..., None, 0],
           [(2, 3, 4)], op=F.getitem),
    # advanced indexing
    OpCase("getitem_repeated", lambda x: x[_IDX], lambda x: x[_IDX], [(3, 4)], gradgrad=True,
           op=F.getitem),
    OpCase("getitem_list", lambda x: x[[0, 0, 1]], lambda x: x[[0, 0, 1]], [(3, 2)], op=F.getitem),
    OpCase("getitem_tensor_idx", lambda x: x[minidl.tensor(_IDX)], lambda x: x[_IDX],
           [(3, 4)], op=F.getitem),
    OpCase("getitem_pairs", lambda x: x[_IDX, _IDX % 4], lambda x: x[_IDX, _IDX % 4],
           [(3, 4)], gradgrad=True, op=F.getitem),
    OpCase("getitem_adv_and_slice", lambda x: x[:, [3, 0, 3]], lambda x: x[:, [3, 0, 3]],
           [(3, 4)], op=F.getitem),
    OpCase("getitem_bool_mask", lambda x: x[_MASK], lambda x: x[_MASK], [(3, 4)],
           gradgrad=True, op=F.getitem),
    OpCase("getitem_bool_tensor", lambda x: x[minidl.tensor(_MASK[:, 0])],
           lambda x: x[_MASK[:, 0]], [(3, 4)], op=F.getitem),
    # joining and padding
    OpCase("concatenate", lambda a, b: F.concatenate([a, b], axis=1),
           lambda a, b: np.concatenate([a, b], axis=1), [(2, 3), (2, 1)], gradgrad=True,
           op=F.concatenate),
    OpCase("cat_neg_axis", lambda a, b, c: F.cat([a, b, c], axis=-1),
           lambda a, b, c: np.concatenate([a, b, c], axis=-1), [(2, 1, 2), (2, 1, 3), (2, 1, 1)],
           op=F.concatenate),
    OpCase("cat_same_input", lambda a: F.concatenate([a, a * 2]),
           lambda a: np.concatenate([a, a * 2]), [(2, 3)], op=F.concatenate),
    OpCase("stack", lambda a, b: F.stack([a, b]), lambda a, b: np.stack([a, b]), [(2, 3),
                                                                                  (2, 3)],
                                                                                  op=F.stack),
    OpCase("stack_neg_axis", lambda a, b: F.stack([a, b], axis=-1),
           lambda a, b: np.stack([a, b], axis=-1), [(2, 3), (2, 3)], gradgrad=True, op=F.stack),
    OpCase("pad_int", lambda x: F.pad(x, 1), lambda x: np.pad(x, 1), [(2, 3)], gradgrad=True,
           op=F.pad),
    OpCase("pad_nchw", lambda x: F.pad(x, ((0, 0), (0, 0), (1, 2), (2, 0)), value=-1.5),
           lambda x: np.pad(x, ((0, 0), (0, 0), (1, 2), (2, 0)), constant_values=-1.5),
           [(2, 1, 3, 2)], op=F.pad),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case: OpCase) -> None:
    check_case(case)


def test_repeated_index_gradient_accumulates() -> None:
    x = minidl.tensor(np.zeros(3), requires_grad=True)
    x[[0, 0, 2, 0]].sum().backward()
    assert x.grad.tolist() == [3.0, 0.0, 1.0]


def test_reshape_errors() -> None:
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\) "
                                         r"\(6 elements\) into \(4, -1\)"):
        minidl.ones(2, 3).reshape(4, -1)


def test_permute_errors() -> None:
    x = minidl.ones(2, 3, 4)
    for dims in [(0, 1), (0, 1, 1), (0, 1, 5), (0, 1, -4)]:
        with pytest.raises(ValueError, match="permute: .* is not a permutation of the 3 axes"):
            x.permute(*dims)
    with pytest.raises(ValueError, match="transpose: axis 3 is out of range"):
        F.transpose(x, 0, 3)


def test_squeeze_errors() -> None:
    with pytest.raises(ValueError, match="squeeze: axis 1 has size 3, expected 1"):
        minidl.ones(2, 3).squeeze(1)
    with pytest.raises(ValueError, match="squeeze: axis 4 is out of range"):
        minidl.ones(2, 3).squeeze(4)


def test_flatten_error() -> None:
    with pytest.raises(ValueError, match="flatten: start_dim 2 comes after end_dim 1"):
        F.flatten(minidl.ones(2, 3, 4), 2, 1)


def test_getitem_errors_name_op_and_shape() -> None:
    with pytest.raises(IndexError, match=r"getitem: bad index for a tensor of shape \(2, 3\)"):
        minidl.ones(2, 3)[5]
    with pytest.raises(IndexError, match="getitem"):
        minidl.ones(2, 3)[[0, 7]]


def test_concatenate_errors() -> None:
    with pytest.raises(ValueError, match="concatenate: expected at least one tensor"):
        F.concatenate([])
    with pytest.raises(ValueError, match=r"concatenate: tensor 1 has shape \(3, 3\), "
                                         r"incompatible with tensor 0's shape \(2, 2\)"):
        F.concatenate([minidl.ones(2, 2), minidl.ones(3, 3)])
    with pytest.raises(TypeError, match="concatenate: tensor 1 has dtype float64"):
        F.concatenate([minidl.ones(2), minidl.ones(2, dtype=np.float64)])
    with pytest.raises(ValueError, match=r"stack: tensor 1 has shape \(3,\), tensor 0 has"):
        F.stack([minidl.ones(2), minidl.ones(3)])


def test_pad_errors() -> None:
    with pytest.raises(ValueError, match="pad: pad_width must give one"):
        F.pad(minidl.ones(2, 2), ((1, 1),))
    with pytest.raises(ValueError, match="pad: negative padding"):
        F.pad(minidl.ones(2, 2), -1)


def test_setitem_on_graph_tensor_raises() -> None:
    x = minidl.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="__setitem__: in-place assignment"):
        x[0] = 2.0
    y = minidl.zeros(3)
    y[1] = minidl.tensor(5.0)
    assert y.tolist() == [0.0, 5.0, 0.0]


def test_flatten_concatenate_stack_reject_out_of_range_axes() -> None:
    x = minidl.ones(2, 3, 4)
    with pytest.raises(ValueError, match=r"flatten: start_dim 3 is out of range for shape "
                                         r"\(2, 3, 4\)"):
        F.flatten(x, 3)
    with pytest.raises(ValueError, match="flatten: end_dim -4 is out of range"):
        F.flatten(x, 0, -4)
    with pytest.raises(ValueError, match="flatten: start_dim 5"):
        minidl.nn.Flatten(5)(x)
    assert F.flatten(x, -3, -2).shape == (6, 4) and F.flatten(minidl.tensor(1.0)).shape == (1,)
    with pytest.raises(ValueError, match=r"concatenate: axis 2 is out of range for .*\(2, 3\)"):
        F.concatenate([minidl.ones(2, 3), minidl.ones(2, 3)], axis=2)
    with pytest.raises(ValueError, match=r"stack: axis 3 is out of range .*\(2, 3\).*-3\.\.2"):
        F.stack([minidl.ones(2, 3), minidl.ones(2, 3)], axis=3)
    with pytest.raises(ValueError, match="stack: axis -4 is out of range"):
        F.stack([minidl.ones(2, 3)], axis=-4)
    assert F.stack([minidl.ones(2, 3)] * 4, axis=-1).shape == (2, 3, 4)
    assert F.stack([minidl.ones(2, 3)] * 4, axis=-3).shape == (4, 2, 3)


def test_dim_alias_of_axis() -> None:
    x = minidl.tensor(np.arange(6.0).reshape(2, 3))
    a, b = minidl.ones(2, 3), minidl.zeros(2, 3)
    assert F.concatenate([a, b], dim=1).shape == (2, 6)
    assert F.stack([a, b], dim=-1).shape == (2, 3, 2)
    np.testing.assert_allclose(F.softmax(x, dim=0).numpy(), F.softmax(x, 0).numpy())
    np.testing.assert_allclose(x.log_softmax(dim=0).numpy(), F.log_softmax(x, axis=0).numpy())
    assert x.softmax().shape == (2, 3) and np.allclose(x.softmax().numpy().sum(1), 1.0)
    assert x.sum(dim=1).tolist() == [3.0, 12.0] and x.mean(dim=0).tolist() == [1.5, 2.5, 3.5]
    assert x.max(dim=1).tolist() == [2.0, 5.0] and x.min(dim=(0, 1)).item() == 0.0
    assert x.argmax(dim=0).tolist() == [1, 1, 1] and x.sum(1, keepdims=True).shape == (2, 1)
    for call in (lambda: x.sum(axis=0, dim=1), lambda: F.softmax(x, 0, dim=1),
                 lambda: F.stack([a, b], 0, dim=0), lambda: x.argmax(axis=0, dim=0)):
        with pytest.raises(TypeError, match="got both axis=0 and dim="):
            call()
