"""``Lookahead``: an exponential moving average of a model's whole state that the model is
reset to at each update (airbench's ``LookaheadState``; Zhang et al. 2019's "lookahead"
with slow weights ``ema`` and step ``1 - decay``).

Every few optimizer steps, ``update(decay)`` moves the average towards the model and then
copies it back into the model:

    ema   = ema + (1 - decay) * (value - ema)
    value = ema

for every floating-point entry of ``model.state_dict()``: parameters (frozen ones too, which
stay as they are) *and* buffers such as batch norm's running statistics, so that the
statistics match the averaged weights. Integer entries (``num_batches_tracked``) are left
alone. ``decay = 0`` keeps the model as it is (and resets the average to it); ``decay = 1``
keeps the average and puts the model back onto it (airbench's last call, which throws
away the steps since the previous update).

The average lives on each value's device in its dtype; it follows the model when the model
is moved or cast after the ``Lookahead`` was made.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from minidl import backend
from minidl.autograd import Tensor
from minidl.nn.module import Module


class Lookahead:
    """Moving average of a model's floating-point state, written back into the model.

    Args:
        model: the module whose ``state_dict()`` entries are averaged; the average starts
            as a copy of them.

    Attributes:
        model: that module.

    >>> import minidl
    >>> lin = minidl.nn.Linear(1, 1, bias=False)
    >>> lin.weight.data[...] = 1.0
    >>> la = Lookahead(lin)
    >>> lin.weight.data[...] = 3.0            # what some optimizer steps did
    >>> la.update(decay=0.75); lin.weight.tolist()   # 1 + 0.25 * (3 - 1)
    [[1.5]]
    """

    def __init__(self, model: Module) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"Lookahead: model must be an nn.Module, got "
                            f"{type(model).__name__}")
        self.model = model
        self._ema: OrderedDict[str, Any] = OrderedDict(
            (name, t.data.copy()) for name, t in self._floats().items())

    def _floats(self) -> OrderedDict[str, Tensor]:
        # Re-read every time: model.to() swaps the arrays inside the same tensors.
        return OrderedDict((k, v) for k, v in self.model.state_dict().items()
                           if v.dtype.kind == "f")

    def _aligned(self, name: str, t: Tensor) -> Any:
        """The average of ``name`` on ``t``'s device in ``t``'s dtype (moved or cast once if
        the model was moved or cast since)."""
        e = self._ema[name]
        if backend.device_of(e) != t.device or e.dtype != t.dtype:
            e = self._ema[name] = t.xp.asarray(backend.to_device(e, t.device), dtype=t.dtype)
        return e

    def _check_names(self, names: Any, where: str, what: str) -> None:
        own, got = set(self._ema), set(names)
        if got != own:
            raise KeyError(f"Lookahead.{where}: {what} do not match the averaged entries "
                           f"(missing: {sorted(own - got)}; unexpected: {sorted(got - own)})")

    def update(self, decay: float) -> None:
        """``ema += (1 - decay) * (value - ema)``, then ``value = ema``, for every floating
        entry of the model's state.

        Args:
            decay: in [0, 1]; the weight the old average keeps.

        Raises:
            ValueError: if ``decay`` is outside [0, 1].
            KeyError: if the model's floating state entries changed since construction.
        """
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"Lookahead.update: decay must be in [0, 1], got {decay}")
        current = self._floats()
        self._check_names(current, "update", "the model's floating state entries")
        rate = 1.0 - decay  # a Python float: float32 state stays float32 (NumPy 2)
        for name, t in current.items():
            e = self._aligned(name, t)
            if e.shape != t.shape:
                raise ValueError(f"Lookahead.update: {name!r} has shape {t.shape}, its average "
                                 f"{tuple(e.shape)}")
            e += rate * (t.data - e)
            t.data[...] = e

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """The averages by state-dict name, as NumPy copies (a snapshot for a checkpoint:
        ``minidl.save`` takes it as it is)."""
        return OrderedDict((k, np.array(backend.to_numpy(v))) for k, v in self._ema.items())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore averages saved by ``state_dict()``, onto each model value's current device
        and dtype. The model itself is not changed.

        Raises:
            KeyError: if the names differ from this model's floating state entries.
            ValueError: on a shape mismatch (nothing is changed then).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Lookahead.load_state_dict: expected a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        current = self._floats()
        self._check_names(current, "load_state_dict", "the model's floating state entries")
        self._check_names(state_dict, "load_state_dict", "the state dict's keys")
        new = OrderedDict()
        for name, t in current.items():
            v = state_dict[name]
            v = v.data if isinstance(v, Tensor) else v
            if not hasattr(v, "shape"):
                v = np.asarray(v)
            if tuple(v.shape) != t.shape:
                raise ValueError(f"Lookahead.load_state_dict: {name!r} has shape "
                                 f"{tuple(v.shape)}, the model's has {t.shape}")
            new[name] = t.xp.array(backend.to_device(v, t.device), dtype=t.dtype, copy=True)
        self._ema = new

    def __repr__(self) -> str:
        return f"Lookahead({type(self.model).__name__}, {len(self._ema)} averaged entries)"
