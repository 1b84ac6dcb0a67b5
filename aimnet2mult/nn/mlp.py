"""Multilayer perceptrons with GELU (exact erf form) between layers.

The layers are ``nn.Linear`` / ``nn.GELU`` subclasses (same state-dict keys) with one extra
TorchScript method, ``record``: the forward pass that also keeps what the hand-written
vector-Jacobian product (:func:`mlp_vjp`) needs, so the exported potential can take forces without
the autograd engine walking the network (see ``aimnet2mult.nn.backbone``).
"""

import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

#: oneDNN (mkldnn) in this torch build. Its matrix product runs the recorded forward and the VJP
#: on CPU in float32: with 10-100 rows against the 256-733 wide weights of AIMNet2 it takes
#: 0.6-0.85x the time of the BLAS (MKL) product behind ``F.linear`` / ``torch.mm``, and 0.45-0.55x
#: with the weights packed once into oneDNN's blocked layout (:class:`PackedWeights`; measured by
#: bench/bench_inference.py, "dense-layer products"). A file exported with it needs a torch build
#: with oneDNN to load (every x86-64 wheel and conda package has it; exported metadata records
#: ``onednn_products``). ``AIMNET2MULT_ONEDNN=0`` in the environment at import time turns it off
#: (BLAS products; files that load in any torch build).
ONEDNN_PRODUCTS: bool = (torch.backends.mkldnn.is_available()
                         and os.environ.get("AIMNET2MULT_ONEDNN", "1").strip() != "0")

if ONEDNN_PRODUCTS:
    def _onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """x (X, n_in) @ weight (n_out, n_in)ᵀ + bias by oneDNN. weight: a plain tensor (also its
        transpose view) or one packed by :func:`_onednn_pack`."""
        if torch.jit.is_scripting():
            # the op's 'Scalar?[]' argument is TorchScript's List[Optional[number]]
            return torch.ops.mkldnn._linear_pointwise(
                x, weight, bias, "none", torch.jit.annotate(List[Optional[number]], []), "")  # noqa: F821
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    def _onednn_pack(weight: Tensor) -> Tensor:
        """weight (n_out, n_in) float32 CPU in oneDNN's blocked layout (an opaque mkldnn tensor)."""
        # 64: the row count the layout is chosen for; any row count works with it, and 64 measured
        # as fast as the exact count at 10-100 rows
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 64)
else:
    def _onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """Without oneDNN: the BLAS product."""
        return torch.nn.functional.linear(x, weight, bias)

    def _onednn_pack(weight: Tensor) -> Tensor:
        """Without oneDNN: the weight as it is."""
        return weight.detach().contiguous()


def dense_product(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x (X, n_in) @ weight (n_out, n_in)ᵀ (+ bias), without autograd support: oneDNN for float32
    on CPU when available, else ``F.linear``. For the hand-written forward / VJP (no_grad).
    weight may be the transpose view of a contiguous matrix, not a column slice of one (oneDNN
    runs such strided matrices ~100x slower)."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2:
        return _onednn_linear(x.contiguous(), weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


class PackedWeights(nn.Module):
    """A Linear layer's weight W (out, in) and its transpose packed once into oneDNN's blocked
    layout, for the recorded forward (x Wᵀ) and the VJP (g W) of exported potentials on CPU in
    float32.

    Off unless :func:`use_packed_weights` turns it on (exported potentials: their weights never
    change). The packed copies are made on the first call and are never serialized: saving keeps
    only the on/off flag (``__getstate__``), loading starts with an empty cache, so a potential can
    be saved, copied or handed to OpenMM after it has been used. Changing the weights of a module
    in which it is on requires ``clear()``.
    """

    enabled: bool
    packed: List[Tensor]

    def __init__(self):
        super().__init__()
        self.enabled = False
        self.packed = []

    def forward(self, weight: Tensor) -> List[Tensor]:
        """[packed W, packed Wᵀ] of weight (out, in), packing on the first call."""
        if len(self.packed) == 0:
            self.packed = [_onednn_pack(weight), _onednn_pack(weight.t())]
        return self.packed

    @torch.jit.export
    def clear(self) -> None:
        self.packed = []

    @torch.jit.export
    def __getstate__(self) -> Tuple[bool, bool]:
        return (self.training, self.enabled)

    @torch.jit.export
    def __setstate__(self, state: Tuple[bool, bool]) -> None:
        if not torch.jit.is_scripting():
            nn.Module.__init__(self)  # eager unpickling / deepcopy start from a bare object
        self.training = state[0]
        self.enabled = state[1]
        self.packed = []


class Linear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.packed_weights = PackedWeights()

    def record(self, x: Tensor, kinds: List[int], saved: List[Tensor]) -> Tensor:
        """Forward of a 2-D input (X, n_in), recording for the VJP the weight (out, in) (kind 0)
        or, with packed weights, the packed transpose (kind 2)."""
        if (self.packed_weights.enabled and x.dtype == torch.float32
                and x.device.type == "cpu" and self.weight.dtype == torch.float32 and x.dim() == 2):
            packed = self.packed_weights(self.weight)
            kinds.append(2)
            saved.append(packed[1])
            return _onednn_linear(x.contiguous(), packed[0], self.bias)
        kinds.append(0)
        saved.append(self.weight)
        return dense_product(x, self.weight, self.bias)


def use_packed_weights(module: nn.Module, enabled: bool = True) -> None:
    """Turn the packed oneDNN weights (:class:`PackedWeights`) of every Linear layer in ``module``
    on or off (and drop the packed copies)."""
    for sub in module.modules():
        if isinstance(sub, PackedWeights):
            sub.enabled = bool(enabled)
            sub.packed = []


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
        """Forward, recording (kind 1) the pre-activation for the VJP."""
        kinds.append(1)
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
        if kinds[k] != 1:  # Linear: saved = weight (out, in), or (kind 2) its packed transpose
            # the whole product, then the columns wanted: a column slice of the weight is a strided
            # matrix that oneDNN runs ~100x slower than the plain one
            if kinds[k] == 2:
                g = _onednn_linear(g.contiguous(), saved[k], None)
            else:
                g = dense_product(g, saved[k].t(), None)
            if k == start and first_input > 0:
                g = g[:, first_input:]
        else:  # GELU: saved = pre-activation
            g = gelu_backward(g, saved[k])
    return g
