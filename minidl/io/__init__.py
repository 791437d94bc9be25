"""Model files other frameworks read: safetensors weights (``minidl/io/safetensors.py``).

``save_safetensors``/``load_safetensors`` write and read a ``state_dict`` in the
`safetensors <https://github.com/huggingface/safetensors>`_ format (a JSON header and raw
little-endian arrays: like minidl's own ``.npz`` checkpoints, it cannot run code), and
``load_torch_state_dict`` puts the weights of the equivalent PyTorch model into a minidl
model. The ``safetensors`` package is an optional extra: ``pip install
'minidl[safetensors]'``.
"""

from minidl.io.safetensors import load_safetensors, load_torch_state_dict, save_safetensors

__all__ = ["load_safetensors", "load_torch_state_dict", "save_safetensors"]
