"""Multilayer perceptrons with GELU (exact erf form) between layers.

The layers are ``nn.Linear`` / ``nn.GELU`` subclasses (same state-dict keys) with one extra
TorchScript method, ``record``: the forward pass that also keeps what the hand-written
vector-Jacobian product (:func:`mlp_vjp`) needs, so the exported potential can take forces without
the autograd engine walking the network (see ``aimnet2mult.nn.backbone``).
"""

from enum import Enum
from typing import List

import torch
from torch import Tensor, nn

from .onednn import PackedWeights, dense_product, onednn_input, onednn_linear


class LayerKind(Enum):
    """What ``record`` kept of a layer, for :func:`mlp_vjp` (TorchScript inlines ``.value``)."""

    LINEAR = 0  # the weight (out, in)
    GELU = 1  # the pre-activation
    LINEAR_PACKED = 2  # the oneDNN-packed transpose of the weight


class Linear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.packed_weights = PackedWeights()

    def record(self, x: Tensor, kinds: List[int], saved: List[Tensor]) -> Tensor:
        """Forward of a 2-D input (X, n_in), recording for the VJP the weight (out, in) or, with
        packed weights, the packed transpose."""
        if self.packed_weights.enabled and onednn_input(x) and self.weight.dtype == torch.float32:
            packed = self.packed_weights(self.weight)
            kinds.append(LayerKind.LINEAR_PACKED.value)
            saved.append(packed[1])
            return onednn_linear(x.contiguous(), packed[0], self.bias)
        kinds.append(LayerKind.LINEAR.value)
        saved.append(self.weight)
        return dense_product(x, self.weight, self.bias)


def _small_on_cpu(x: Tensor) -> bool:
    """A 2-D CPU tensor small enough for ATen's own GELU kernels to beat oneDNN's (measured
    crossover ~16k elements: 10 x 512 takes 4 vs 11 us forward, 7 vs 15 us backward)."""
    return x.device.type == "cpu" and x.dim() == 2 and x.numel() <= 16384


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU of the recorded forward. ATen hands contiguous float32 CPU inputs to
    oneDNN, whose per-call setup dominates small tensors; a transposed view is not contiguous, so
    small ones take ATen's vectorised kernel (same values to float32 rounding)."""
    if _small_on_cpu(x):
        return torch.nn.functional.gelu(x.t()).t()
    return torch.nn.functional.gelu(x)


def gelu_backward(grad: Tensor, x: Tensor) -> Tensor:
    """grad · GELU'(x), with the kernel choice of :func:`gelu`."""
    if _small_on_cpu(x):
        return torch.ops.aten.gelu_backward(grad.t(), x.t()).t()
    return torch.ops.aten.gelu_backward(grad, x)


class GELU(nn.GELU):
    def record(self, x: Tensor, kinds: List[int], saved: List[Tensor]) -> Tensor:
        """Forward, recording the pre-activation for the VJP."""
        kinds.append(LayerKind.GELU.value)
        saved.append(x)
        return gelu(x)


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
    (X, n_in - first_input): the columns of inputs that need no gradient are dropped."""
    g = grad
    for k in range(stop - 1, start - 1, -1):
        if kinds[k] != LayerKind.GELU.value:  # Linear: saved = weight (out, in) or its packed transpose
            # the whole product, then the columns wanted: a column slice of the weight is a strided
            # matrix that oneDNN runs ~100x slower than the plain one
            if kinds[k] == LayerKind.LINEAR_PACKED.value:
                g = onednn_linear(g.contiguous(), saved[k], None)
            else:
                g = dense_product(g, saved[k].t(), None)
            if k == start and first_input > 0:
                g = g[:, first_input:]
        else:  # GELU: saved = pre-activation
            g = gelu_backward(g, saved[k])
    return g
