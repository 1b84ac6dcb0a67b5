"""oneDNN dense-layer products for the hand-written forward / VJP of exported potentials (CPU,
float32), and the packed weight copies that make them fast (see ``aimnet2mult.nn.mlp``)."""

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
    def onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """x (X, n_in) @ weight (n_out, n_in)ᵀ + bias by oneDNN. weight: a plain tensor (also its
        transpose view) or one packed by :func:`pack_weight`."""
        if torch.jit.is_scripting():
            # the op's 'Scalar?[]' argument is TorchScript's List[Optional[number]]
            return torch.ops.mkldnn._linear_pointwise(
                x, weight, bias, "none", torch.jit.annotate(List[Optional[number]], []), "")  # noqa: F821
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    def pack_weight(weight: Tensor) -> Tensor:
        """weight (n_out, n_in) float32 CPU in oneDNN's blocked layout (an opaque mkldnn tensor)."""
        # 64: the row count the layout is chosen for; any row count works with it, and 64 measured
        # as fast as the exact count at 10-100 rows
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 64)
else:
    def onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """Without oneDNN: the BLAS product."""
        return torch.nn.functional.linear(x, weight, bias)

    def pack_weight(weight: Tensor) -> Tensor:
        """Without oneDNN: the weight as it is."""
        return weight.detach().contiguous()


def onednn_input(x: Tensor) -> bool:
    """Whether x is an input the oneDNN products take: a 2-D float32 CPU tensor."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2


def dense_product(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x (X, n_in) @ weight (n_out, n_in)ᵀ (+ bias), without autograd support: oneDNN for float32
    on CPU when available, else ``F.linear``. For the hand-written forward / VJP (no_grad).
    weight may be the transpose view of a contiguous matrix, not a column slice of one (oneDNN
    runs such strided matrices ~100x slower)."""
    if onednn_input(x):
        return onednn_linear(x.contiguous(), weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


class PackedWeights(nn.Module):
    """A Linear layer's weight W (out, in) and its transpose packed once into oneDNN's blocked
    layout, for the recorded forward (x Wᵀ) and the VJP (g W) of exported potentials on CPU in
    float32.

    Off unless turned on (``Potential.set_packed_weights``, :func:`use_packed_weights`; potentials
    have it on: their weights never change). The packed copies are made on the first call and are
    never serialized: saving keeps only the on/off flag (``__getstate__``), loading starts with an
    empty cache, so a potential can be saved, copied or handed to OpenMM after it has been used.
    Changing the weights of a module in which it is on requires ``clear()``.
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
            self.packed = [pack_weight(weight), pack_weight(weight.t())]
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


def use_packed_weights(module: nn.Module, enabled: bool = True) -> None:
    """Turn the packed oneDNN weights (:class:`PackedWeights`) of every Linear layer in ``module``
    on or off (and drop the packed copies)."""
    for sub in module.modules():
        if isinstance(sub, PackedWeights):
            sub.enabled = bool(enabled)
            sub.clear()
