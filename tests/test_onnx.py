"""ONNX export (``minidl.onnx``): every bundled model and each supported layer, run by
ONNX's reference evaluator (and onnxruntime when installed), against minidl's eval-mode
output; dynamic batch, running statistics, modes, errors and atomic writes."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason='pip install "minidl[onnx]"')

from onnx.reference import ReferenceEvaluator  # noqa: E402

import minidl  # noqa: E402
import minidl.onnx  # noqa: E402
from minidl import models, nn  # noqa: E402
from minidl.onnx import export, register, supported  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:  # optional: the reference evaluator still checks every case
    ort = None

RTOL, ATOL = 1e-4, 1e-5


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial normalization statistics and affine parameters (defaults are 0/1)."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.track_running_stats:
            c = m.num_features
            m.running_mean.data[...] = rng.normal(0.0, 0.5, c)
            m.running_var.data[...] = rng.uniform(0.3, 3.0, c)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and \
                m.weight is not None:
            m.bias.data[...] = rng.normal(0.0, 0.3, m.bias.shape)
            if m.weight.requires_grad:  # airbench's frozen scales stay 1
                m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
    return model


def _expected(model: nn.Module, x: np.ndarray) -> np.ndarray:
    old = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with minidl.no_grad():
            first = next(iter(model.parameters()), None)
            dtype = None if first is None else first.dtype
            return model(minidl.tensor(x, dtype=dtype)).numpy()
    finally:
        for m, t in old:
            object.__setattr__(m, "training", t)


def _check(model: nn.Module, shape: tuple[int, ...], tmp_path, batches=(2, 3),
           seed: int = 0) -> onnx.ModelProto:
    """Export with a batch-2 example; compare every runtime at each batch size."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "model.onnx"
    proto = export(model, rng.normal(size=(2, *shape)).astype(np.float32), path)
    onnx.checker.check_model(onnx.load(str(path)))
    runners = [ReferenceEvaluator(str(path))]
    if ort is not None:
        runners.append(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    for n in batches:
        x = rng.normal(size=(n, *shape)).astype(np.float32)
        want = _expected(model, x)
        for run in runners:
            got = run.run(None, {"input": x})[0]
            assert got.shape == want.shape, type(run).__name__
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL,
                                       err_msg=type(run).__name__)
    return proto


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name, build, shape", [
    ("seed_cnn", lambda: models.seed_cnn(image_size=16), (3, 16, 16)),
    ("resnet9", lambda: models.resnet9(width=8), (3, 32, 32)),
    ("airbench94", lambda: models.airbench94(widths=(8, 16, 16)), (3, 32, 32)),
    ("dp_cnn", lambda: models.dp_cnn(width=8, image_size=16), (3, 16, 16)),
])
def test_bundled_models_match(name, build, shape, tmp_path):
    minidl.manual_seed(0)
    model = _randomize(build())
    proto = _check(model, shape, tmp_path)
    ops = {n.op_type for n in proto.graph.node}
    assert "Conv" in ops and "MaxPool" in ops  # the fused conv + pool became plain nodes
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == list(shape)
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert proto.opset_import[0].version >= 17


def test_weights_are_float32_initializers_named_like_the_state_dict(tmp_path):
    minidl.manual_seed(0)
    model = _randomize(models.resnet9(width=4))
    proto = export(model, np.zeros((1, 3, 32, 32), np.float32), tmp_path / "r.onnx")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert all(a.dtype == np.float32 for n, a in inits.items() if "shape" not in n)
    state = model.state_dict()
    for key in ("0.0.weight", "0.1.running_mean", "0.1.running_var", "3.block.1.1.bias"):
        np.testing.assert_array_equal(inits[key], state[key].numpy())


# --------------------------------------------------------------------------- layers


def _conv_4pad() -> nn.Conv2d:
    conv = nn.Conv2d(3, 4, 3)
    conv.padding = (0, 1, 2, 1)  # (top, bottom, left, right), as F.conv2d takes it
    return conv


def _bn2d(**kw) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(3, **kw)


LAYERS = [
    ("conv", lambda: nn.Conv2d(3, 4, 3), (3, 8, 8)),
    ("conv_pad1_stride2", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 9, 9)),
    ("conv_same_even_kernel", lambda: nn.Conv2d(3, 4, 4, padding="same"), (3, 7, 7)),
    ("conv_same_dilated", lambda: nn.Conv2d(3, 4, 3, padding="same", dilation=2), (3, 8, 8)),
    ("conv_valid_rect", lambda: nn.Conv2d(3, 4, (3, 1), padding="valid"), (3, 6, 5)),
    ("conv_pad_4tuple", _conv_4pad, (3, 6, 6)),
    ("conv_groups_nobias", lambda: nn.Conv2d(4, 6, 3, groups=2, bias=False), (4, 6, 6)),
    ("conv_depthwise", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 5, 5)),
    ("conv_dilation_stride_pad", lambda: nn.Conv2d(3, 4, 3, stride=(2, 1), padding=(1, 2),
                                                   dilation=(2, 1)), (3, 9, 7)),
    ("conv_relu", lambda: nn.Conv2d(3, 4, 3, padding=1, activation="relu"), (3, 6, 6)),
    ("maxpool", lambda: nn.MaxPool2d(2), (3, 7, 7)),
    ("maxpool_pad", lambda: nn.MaxPool2d(3, stride=2, padding=1), (3, 8, 8)),
    ("avgpool", lambda: nn.AvgPool2d(2), (3, 6, 6)),
    ("avgpool_pad", lambda: nn.AvgPool2d(3, stride=2, padding=1), (3, 7, 7)),
    ("adaptive_avgpool_1", lambda: nn.AdaptiveAvgPool2d(1), (3, 5, 5)),
    ("adaptive_avgpool_2", lambda: nn.AdaptiveAvgPool2d(2), (3, 6, 4)),
    ("batchnorm2d", _bn2d, (3, 4, 4)),
    ("batchnorm2d_relu_eps", lambda: _bn2d(eps=1e-12, activation="relu"), (3, 4, 4)),
    ("batchnorm2d_no_affine", lambda: _bn2d(affine=False), (3, 4, 4)),
    ("batchnorm2d_batch_stats", lambda: _bn2d(track_running_stats=False), (3, 4, 4)),
    ("batchnorm1d_2d", lambda: nn.BatchNorm1d(5), (5,)),
    ("batchnorm1d_3d", lambda: nn.BatchNorm1d(3), (3, 6)),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), (4, 3, 3)),
    ("groupnorm_one_group_no_affine", lambda: nn.GroupNorm(1, 4, affine=False), (4, 3, 3)),
    ("groupnorm_3d", lambda: nn.GroupNorm(3, 6, eps=1e-3), (6, 5)),
    ("layernorm", lambda: nn.LayerNorm(8), (8,)),
    ("layernorm_2axes_no_affine", lambda: nn.LayerNorm((4, 5), elementwise_affine=False),
     (3, 4, 5)),
    ("linear", lambda: nn.Linear(6, 4), (6,)),
    ("linear_nobias", lambda: nn.Linear(6, 4, bias=False), (6,)),
    ("linear_3d", lambda: nn.Linear(6, 4), (5, 6)),
    ("relu", nn.ReLU, (3, 4, 4)),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), (3, 4, 4)),
    ("sigmoid", nn.Sigmoid, (3, 4, 4)),
    ("tanh", nn.Tanh, (3, 4, 4)),
    ("gelu", nn.GELU, (3, 4, 4)),
    ("softmax", lambda: nn.Softmax(dim=1), (5, 3)),
    ("softmax_last", nn.Softmax, (5, 3)),
    ("flatten", nn.Flatten, (3, 4, 4)),
    ("flatten_middle", lambda: nn.Flatten(1, 2), (3, 4, 5)),
    ("flatten_tail", lambda: nn.Flatten(2), (3, 4, 5)),
    ("flatten_all", lambda: nn.Flatten(0, -1), (3, 4)),
    ("dropout", lambda: nn.Dropout(0.5), (3, 4)),
    ("identity", nn.Identity, (3, 4)),
    ("scale", lambda: models.Scale(0.125), (3, 4)),
    ("residual", lambda: models.Residual(nn.Sequential(
        nn.Conv2d(3, 3, 3, padding="same", bias=False), nn.BatchNorm2d(3, activation="relu"))),
     (3, 6, 6)),
    ("fused_conv_relu_pool", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(),
                                                   nn.MaxPool2d(2, padding=1)), (3, 7, 7)),
    ("mlp", lambda: nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(12, 8),
                                  nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3),
                                  nn.Softmax(dim=-1)), (3, 4)),
]


@pytest.mark.parametrize("build, shape", [pytest.param(b, s, id=i) for i, b, s in LAYERS])
def test_layer_matches(build, shape, tmp_path):
    minidl.manual_seed(1)
    layer = _randomize(build(), seed=1)
    layer.train()  # exported in eval mode whatever the mode
    _check(layer, shape, tmp_path)
    assert all(m.training for m in layer.modules())


def test_every_supported_type_is_tested():
    covered = set()
    for _, build, _ in LAYERS:
        covered |= {type(m) for m in build().modules()}
    assert set(supported()) <= covered, set(supported()) - covered


def test_batch_norm_uses_running_statistics(tmp_path):
    bn = _randomize(nn.BatchNorm2d(3))
    _check(bn, (3, 2, 2), tmp_path, batches=(1, 4))
    with minidl.no_grad():  # batch statistics would give another result
        bn.train()
        x = np.random.default_rng(2).normal(size=(4, 3, 2, 2)).astype(np.float32)
        batch = bn(minidl.tensor(x)).numpy()
    assert not np.allclose(batch, _expected(bn, x), atol=1e-3)


def test_static_batch(tmp_path):
    proto = export(nn.Linear(3, 2), np.zeros((4, 3), np.float32), tmp_path / "l.onnx",
                   dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_float64_model_exports_float32(tmp_path):
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh())
    proto = _check(model, (3,), tmp_path)  # the float32 example is cast to float64
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT}


def test_modes_are_restored(tmp_path):
    model = models.seed_cnn(image_size=16)
    model.train()
    model[4].eval()
    before = [m.training for m in model.modules()]
    export(model, np.zeros((1, 3, 16, 16), np.float32), tmp_path / "s.onnx")
    assert [m.training for m in model.modules()] == before


def test_input_and_output_names(tmp_path):
    proto = export(nn.Sequential(nn.ReLU(), nn.Dropout()), np.zeros((1, 2), np.float32),
                   tmp_path / "n.onnx", input_name="images", output_name="logits")
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    out = ReferenceEvaluator(proto).run(None, {"images": np.array([[-1.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(out[0], [[0.0, 2.0]])
    proto = export(nn.Identity(), np.zeros((1, 2), np.float32), tmp_path / "i.onnx")
    assert [n.op_type for n in proto.graph.node] == ["Identity"]


# --------------------------------------------------------------------------- errors


class Custom(nn.Module):
    def forward(self, x):
        return x * 3.0


class MyConv(nn.Conv2d):
    pass


def test_unsupported_module_names_its_path_and_type(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), models.Residual(Custom()))
    target = tmp_path / "model.onnx"
    with pytest.raises(TypeError, match=r"layer '1\.block' of type .*test_onnx\.Custom.*"
                                        r"Supported .*Conv2d.*Sequential"):
        export(model, np.zeros((2, 4), np.float32), target)
    assert not target.exists()
    with pytest.raises(TypeError, match=r"'<model>' of type .*MyConv"):
        export(MyConv(3, 4, 3), np.zeros((1, 3, 5, 5), np.float32), target)


def test_a_registered_rule_exports_a_custom_module(tmp_path, monkeypatch):
    monkeypatch.setattr("minidl.onnx._RULES", dict(minidl.onnx._RULES))

    @register(Custom)
    def _custom(ctx, m, path, x):
        three = ctx.constant(f"{path}.three", np.float32(3.0))
        return ctx.leaf(m, x, ctx.node("Mul", [x.name, three], path))

    _check(nn.Sequential(nn.Linear(4, 4), models.Residual(Custom())), (4,), tmp_path)


def test_unexpressible_layer_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"layer '0' \(AdaptiveAvgPool2d\).*no adaptive"):
        export(nn.Sequential(nn.AdaptiveAvgPool2d(2)), np.zeros((1, 1, 5, 5), np.float32),
               tmp_path / "a.onnx")


def test_failed_export_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        export(nn.Sequential(Custom()), np.zeros((1, 2), np.float32), target)
    assert target.read_bytes() == b"old"

    real = minidl.onnx.atomic_write

    @contextlib.contextmanager
    def dies_mid_write(path, mode):
        with real(path, mode) as f:
            class Half:
                def write(self, data):
                    f.write(data[: len(data) // 2])
                    raise OSError("disk full")
            yield Half()

    monkeypatch.setattr(minidl.onnx, "atomic_write", dies_mid_write)
    with pytest.raises(OSError, match="disk full"):
        export(nn.Linear(2, 2), np.zeros((1, 2), np.float32), target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="must be an nn.Module"):
        export(lambda x: x, np.zeros((1, 2), np.float32), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="floating-point"):
        export(nn.ReLU(), np.zeros((1, 2), np.int64), tmp_path / "x.onnx")
