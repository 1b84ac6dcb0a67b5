"""Multilayer perceptrons with GELU (exact erf form) between layers.

The layers are ``nn.Linear`` / ``nn.GELU`` subclasses (same state-dict keys) with one extra
TorchScript method, ``record``: the forward pass that also keeps what the hand-written
vector-Jacobian product (:func:`mlp_vjp`) needs, so the exported potential can take forces without
the autograd engine walking the network (see ``aimnet2mult.nn.backbone``).
"""

from typing import List

import torch
from torch import Tensor, nn


class Linear(nn.Linear):
    def record(self, x: Tensor, kinds: List[int], saved: List[Tensor]) -> Tensor:
        """Forward of a 2-D input (X, n_in), recording (kind 0) the weight (out, in) for the VJP."""
        kinds.append(0)
        saved.append(self.weight)
        return torch.nn.functional.linear(x, self.weight, self.bias)


class GELU(nn.GELU):
    def record(self, x: Tensor, kinds: List[int], saved: List[Tensor]) -> Tensor:
        """Forward, recording (kind 1) the pre-activation for the VJP."""
        kinds.append(1)
        saved.append(x)
        return torch.nn.functional.gelu(x)


def make_mlp(n_in: int, hidden: List[int], n_out: int, last_activation: bool = False) -> nn.Sequential:
    """Linear(n_in, h0) GELU ... Linear(h_last, n_out) [GELU if last_activation].

    Layout (Linear at even indices, GELU at odd ones) matches the official AIMNet2 files.
    """
    layers: List[nn.Module] = []
    sizes = [n_in] + list(hidden)
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(Linear(a, b))
        layers.append(GELU())
    layers.append(Linear(sizes[-1], n_out))
    if last_activation:
        layers.append(GELU())
    return nn.Sequential(*layers)


def mlp_vjp(grad: Tensor, kinds: List[int], saved: List[Tensor], start: int, stop: int,
            first_input: int = 0) -> Tensor:
    """Gradient of Σ grad·MLP(x) with respect to x[:, first_input:], for the layers recorded at
    ``kinds[start:stop]`` / ``saved[start:stop]`` by ``record``. grad: (X, n_out) ->
    (X, n_in - first_input): inputs that need no gradient are left out of the first product."""
    g = grad
    for k in range(stop - 1, start - 1, -1):
        if kinds[k] == 0:  # Linear: saved = weight (out, in)
            weight = saved[k]
            if k == start and first_input > 0:
                weight = weight[:, first_input:]
            g = torch.mm(g, weight)
        else:  # GELU: saved = pre-activation
            g = torch.ops.aten.gelu_backward(g, saved[k])
    return g
