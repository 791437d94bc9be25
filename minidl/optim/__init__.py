"""Optimizers (``SGD``, ``Adam``, ``AdamW``), ``clip_grad_norm_``, learning-rate schedules
(``minidl.optim.lr_scheduler``) and ``Lookahead`` (a moving average of a model's state).

>>> import minidl, minidl.nn, minidl.optim
>>> model = minidl.nn.Linear(3, 1)
>>> opt = minidl.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9)
>>> model(minidl.ones(4, 3)).sum().backward(); opt.step(); opt.zero_grad()
>>> sorted(opt.state)
['bias', 'weight']
"""

from minidl.optim import lr_scheduler
from minidl.optim.adam import Adam, AdamW
from minidl.optim.lookahead import Lookahead
from minidl.optim.optimizer import Optimizer, clip_grad_norm_
from minidl.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Lookahead", "Optimizer", "clip_grad_norm_", "lr_scheduler"]
