"""AIMNet2 backbone: element embedding, three message passes and neural charge equilibration."""

from typing import Dict, List, NamedTuple, Tuple

import torch
from torch import Tensor, nn

from . import nbops
from .basis import PairBasis, RadialBasis
from .conv import (
    ShellConvolution,
    dense_matrices_grad_to_pairs,
    dense_shell_matrices,
    dense_shell_sums_recorded,
    dense_shell_sums_vjp,
    flat_shell_sums_recorded,
    flat_shell_sums_vjp,
    shell_sums,
)
from .keys import Key
from .mlp import make_mlp, mlp_vjp


def charge_equilibration(total: Tensor, q_raw: Tensor, phi: Tensor, data: Dict[str, Tensor]) -> Tensor:
    """Neural charge equilibration (NQE), independently per charge channel.

    total: (n_mol, C) target charge per channel; q_raw, phi: atom tensors (A..., C) (0 on padding).
    q_i = q̃_i + (φ_i² / (Σ_k φ_k² + 1e-6)) (Q - Σ_k q̃_k); the 1e-6 guard matches the official model,
    so the total is conserved up to (Q - Σq̃) 1e-6 / Σφ².
    """
    return charge_equilibration_parts(total, q_raw, phi, data)[0]


def charge_equilibration_parts(total: Tensor, q_raw: Tensor, phi: Tensor,
                               data: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`charge_equilibration` with its intermediates: (q, w = φ², w_sum = Σw + 1e-6 and
    excess = Q - Σq̃ per molecule), what :func:`charge_equilibration_vjp` needs."""
    w = phi * phi
    w_sum = nbops.mol_sum(w, data) + 1e-6
    excess = total - nbops.mol_sum(q_raw, data)
    q = q_raw + w / nbops.mol_to_atoms(w_sum, data) * nbops.mol_to_atoms(excess, data)
    return q, w, w_sum, excess


def charge_equilibration_vjp(g_q: Tensor, w: Tensor, w_sum: Tensor, excess: Tensor, phi: Tensor,
                             data: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
    """VJP of :func:`charge_equilibration` (w = φ², w_sum and excess per molecule as there):
    g_q (A..., C) -> (gradient of q_raw, gradient of φ)."""
    s_atoms = nbops.mol_to_atoms(w_sum, data)
    r = w / s_atoms
    gr = nbops.mol_to_atoms(nbops.mol_sum(g_q * r, data), data)  # Σ_k g_k w_k / S per molecule
    g_q_raw = g_q - gr
    g_w = nbops.mol_to_atoms(excess, data) / s_atoms * (g_q - gr)
    return g_q_raw, 2.0 * phi * g_w



class PassRecord(NamedTuple):
    """What :meth:`AIMNet2Backbone.vjp` needs of one interaction pass (flat layout).

    x_j: the convolution input gathered per pair (flat products) or per atom (dense shell
    matrices); v: the vector shell sums; for every pass but the last, the charge equilibration's
    phi (A, C), weights wq, per-molecule weight sum w_sum and charge excess (see
    ``charge_equilibration_parts``); the last pass holds empty tensors there.
    """

    x_j: Tensor
    v: Tensor
    phi: Tensor
    wq: Tensor
    w_sum: Tensor
    excess: Tensor


class BackboneRecord(NamedTuple):
    """The records of :meth:`AIMNet2Backbone.forward_recorded`: the MLP layer records (kinds, saved)
    with each pass's slice ``bounds[k]:bounds[k + 1]``, one :class:`PassRecord` per pass, and the
    dense shell matrices (empty when the flat products are used)."""

    kinds: List[int]
    saved: List[Tensor]
    bounds: List[int]
    passes: List[PassRecord]
    s_mat: Tensor

class AIMNet2Backbone(nn.Module):
    """Embedding + passes. Returns the AIM features (A..., aim_size) and charges (A..., C).

    The embedding table has one row per (shifted) element index: row z of fidelity f is
    ``z + f * offset``; row 0 is padding. Features a_i are the row viewed as (F, G) = (channel, shell).
    """

    num_features: int
    num_shells: int
    num_charge_channels: int
    #: the recorded forward / VJP use per-shell dense matrices (conv.dense_shell_matrices) up to
    #: this many atoms (padding included; memory G·4·A² floats), the flat neighbour products above it
    dense_products_max_atoms: int

    def __init__(self, num_rows: int, cutoff: float, num_shells: int, shell_start: float,
                 num_features: int, num_combinations: int, passes: List[List[int]], aim_size: int,
                 num_charge_channels: int):
        super().__init__()
        self.num_features = num_features
        self.num_shells = num_shells
        self.num_charge_channels = num_charge_channels
        self.dense_products_max_atoms = 128  # measured crossover: 150-200 atoms (chain molecules)
        fg = num_features * num_shells
        c = num_charge_channels
        self.basis = RadialBasis(cutoff, num_shells, shell_start)
        self.embedding = nn.Embedding(num_rows, fg, padding_idx=0)
        self.conv_atoms = ShellConvolution(num_features, num_shells, num_combinations)
        self.conv_charges = ShellConvolution(c, num_shells, num_combinations)
        width0 = 2 * fg + num_features * num_combinations
        width = width0 + c + c * num_shells + c * num_combinations
        mlps: List[nn.Module] = []
        for ipass, hidden in enumerate(passes):
            last = ipass == len(passes) - 1
            n_out = aim_size if last else 2 * c + fg
            mlps.append(make_mlp(width0 if ipass == 0 else width, hidden, n_out,
                                 last_activation=ipass > 0))
        self.passes = nn.ModuleList(mlps)

    def _joined_agh(self) -> Tensor:
        """Mixing weights of the atom and charge convolutions stacked (F + C, G, H): passes 2-3
        run both convolutions as one over F + C channels."""
        return torch.cat([self.conv_atoms.agh, self.conv_charges.agh], dim=0)

    def _joined_input(self, a: Tensor, q: Tensor) -> Tensor:
        """Atom features (A..., F, G) and charges (A..., C) as one (A..., F + C, G) convolution
        input (a charge has the same value on every shell)."""
        qx = q.unsqueeze(-1).expand(list(q.shape) + [self.num_shells])
        return torch.cat([a, qx], dim=-2)

    def _pass_input(self, a: Tensor, q: Tensor, s: Tensor, p: Tensor) -> Tensor:
        """MLP input of passes 2-3 in the official layout [a | S_a | P_a | q | S_q | P_q] from the
        joined convolution's S (A..., F + C, G) and P (A..., F + C, H). Split (one backward node
        each) rather than sliced (one zero-filled gradient each)."""
        s_a, s_q = torch.split(s, [self.num_features, self.num_charge_channels], dim=-2)
        p_a, p_q = torch.split(p, [self.num_features, self.num_charge_channels], dim=-2)
        return torch.cat([a.flatten(-2), s_a.flatten(-2), p_a.flatten(-2), q, s_q.flatten(-2),
                          p_q.flatten(-2)], dim=-1)

    def _initial_state(self, numbers: Tensor) -> Tuple[Tensor, List[int], Tensor, Tensor]:
        """(padding mask (A..., 1), feature shape [A..., F, G], embedded features a (A..., F, G),
        zero charges q (A..., C)) before the first pass."""
        mask = (numbers != 0).unsqueeze(-1)
        shape = list(numbers.shape) + [self.num_features, self.num_shells]
        a = self.embedding(numbers).view(shape)
        q = torch.zeros(list(numbers.shape) + [self.num_charge_channels], dtype=a.dtype, device=a.device)
        return mask, shape, a, q

    def forward(self, numbers: Tensor, charge_channels: Tensor,
                data: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """numbers: shifted element indices (A...); charge_channels: (n_mol, C) targets.
        Differentiable by autograd, any layout. ``data`` must hold ``d_ij``, ``u_ij`` (pair
        geometry) for the layout seam. Returns (aim (A..., aim_size), charges q (A..., C))."""
        basis = self.basis.pair_basis(data[Key.D_IJ.value], data[Key.U_IJ.value], nbops.is_dense(data))
        none = torch.empty(0, dtype=basis.gs.dtype, device=basis.gs.device)
        aim, q, _ = self._passes(numbers, charge_channels, data, basis, none, False)
        return aim, q

    def forward_recorded(self, numbers: Tensor, charge_channels: Tensor, data: Dict[str, Tensor],
                         w: Tensor) -> Tuple[Tensor, Tensor, BackboneRecord]:
        """The flat-layout forward (run it under no_grad) that keeps what :meth:`vjp` needs.

        w: the flat pair basis (G, A, 4, M) of ``RadialBasis.flat_basis``. Returns (aim, q,
        record); the dense shell matrices are used up to ``dense_products_max_atoms`` atoms."""
        s_mat = torch.empty(0, dtype=w.dtype, device=w.device)
        if numbers.shape[0] <= self.dense_products_max_atoms:
            s_mat = dense_shell_matrices(w, data[Key.NBMAT.value])
        none = torch.empty(0, dtype=w.dtype, device=w.device)
        return self._passes(numbers, charge_channels, data, PairBasis(none, none, w), s_mat, True)

    def _passes(self, numbers: Tensor, charge_channels: Tensor, data: Dict[str, Tensor], basis: PairBasis,
                s_mat: Tensor, record: bool) -> Tuple[Tensor, Tensor, BackboneRecord]:
        """The interaction passes: embedding, then per pass the shell convolutions of the atom
        features (and, from the second pass on, of the charges), the pass MLP and, for every pass
        but the last, the charge update with NQE. With ``record`` (flat layout; s_mat: the dense
        shell matrices or empty) it keeps what :meth:`vjp` needs; without, the record is empty."""
        mask, shape, a, q = self._initial_state(numbers)
        c = self.num_charge_channels
        aim = a.flatten(-2)
        n_pass = len(self.passes)
        agh_both = self._joined_agh()
        kinds: List[int] = []
        saved: List[Tensor] = []
        bounds: List[int] = [0]
        records: List[PassRecord] = []
        none = torch.empty(0, dtype=a.dtype, device=a.device)
        for ipass, mlp in enumerate(self.passes):
            x = a if ipass == 0 else self._joined_input(a, q)
            agh = self.conv_atoms.agh if ipass == 0 else agh_both
            x_j, v = none, none
            if record:
                s, p, x_j, v = _shell_sums_recorded(x, basis.w, s_mat, data[Key.NBMAT.value], agh)
            else:
                s, p = shell_sums(x, basis, data, agh)
            if ipass == 0:
                h = torch.cat([a.flatten(-2), s.flatten(-2), p.flatten(-2)], dim=-1)
            else:
                h = self._pass_input(a, q, s, p)
            if record:
                for layer in mlp:
                    h = layer.record(h, kinds, saved)
                bounds.append(len(kinds))
            else:
                h = mlp(h)
            out = h.masked_fill(~mask, 0.0)
            if ipass == n_pass - 1:
                aim = out
                if record:
                    records.append(PassRecord(x_j, v, none, none, none, none))
            else:
                dq, phi, da = torch.split(out, [c, c, out.shape[-1] - 2 * c], dim=-1)
                q_raw = dq if ipass == 0 else q + dq
                q, wq, w_sum, excess = charge_equilibration_parts(charge_channels, q_raw, phi, data)
                a = a + da.reshape(shape)
                if record:
                    records.append(PassRecord(x_j, v, phi, wq, w_sum, excess))
        return aim, q, BackboneRecord(kinds, saved, bounds, records, s_mat)

    def vjp(self, g_aim: Tensor, g_q_out: Tensor, numbers: Tensor, data: Dict[str, Tensor], w: Tensor,
            record: BackboneRecord) -> Tensor:
        """Gradient of Σ g_aim·aim + Σ g_q_out·q with respect to the flat pair basis W (G, A, 4, M),
        from the records of :meth:`forward_recorded`. The element embedding does not depend on
        the coordinates, so the first pass's convolution input gets no gradient."""
        nbmat = data[Key.NBMAT.value]
        s_mat = record.s_mat
        kinds, saved, bounds = record.kinds, record.saved, record.bounds
        mask = (numbers != 0).unsqueeze(-1)
        c = self.num_charge_channels
        f = self.num_features
        g = self.num_shells
        n_pass = len(self.passes)
        n_a = numbers.shape[0]
        agh_both = self._joined_agh()
        h_f = self.conv_atoms.agh.shape[-1]
        dense = s_mat.numel() > 0
        g_w = torch.zeros_like(w) if not dense else torch.empty(0, dtype=w.dtype, device=w.device)
        g_res_all: List[Tensor] = []  # dense: per convolution, the product gradient and its input
        x_all: List[Tensor] = []
        g_a = torch.zeros(n_a, f, g, dtype=w.dtype, device=w.device)
        g_q = g_q_out
        for ipass in range(n_pass - 1, -1, -1):
            rec = record.passes[ipass]
            x_j = rec.x_j
            v = rec.v
            if ipass == n_pass - 1:
                g_out = g_aim
            else:
                g_q_raw, g_phi = charge_equilibration_vjp(g_q, rec.wq, rec.w_sum, rec.excess, rec.phi, data)
                g_out = torch.cat([g_q_raw, g_phi, g_a.flatten(-2)], dim=-1)
                # q_raw = q + dq (passes >= 1): q's gradient so far is g_q_raw; a = a + da keeps g_a
                g_q = g_q_raw
            g_out = g_out.masked_fill(~mask, 0.0)
            if ipass == 0:
                # the first pass's input starts with the embedding, which needs no gradient
                g_in = mlp_vjp(g_out, kinds, saved, bounds[ipass], bounds[ipass + 1], f * g)
                g_s, g_p = torch.split(g_in, [f * g, f * h_f], dim=-1)
                g_s = g_s.reshape(n_a, f, g)
                g_p = g_p.reshape(n_a, f, h_f)
                agh = self.conv_atoms.agh
            else:
                g_in = mlp_vjp(g_out, kinds, saved, bounds[ipass], bounds[ipass + 1])
                g_a_in, g_s_a, g_p_a, g_q_in, g_s_q, g_p_q = torch.split(
                    g_in, [f * g, f * g, f * h_f, c, c * g, c * h_f], dim=-1)
                g_s = torch.cat([g_s_a.reshape(n_a, f, g), g_s_q.reshape(n_a, c, g)], dim=-2)
                g_p = torch.cat([g_p_a.reshape(n_a, f, h_f), g_p_q.reshape(n_a, c, h_f)], dim=-2)
                g_a = g_a + g_a_in.reshape(n_a, f, g)
                g_q = g_q + g_q_in
                agh = agh_both
            need_x = ipass > 0
            if dense:
                g_res, g_x = dense_shell_sums_vjp(g_s, g_p, v, s_mat, agh, need_x)
                g_res_all.append(g_res)
                x_all.append(x_j)
            else:
                g_w_pass, g_x = flat_shell_sums_vjp(g_s, g_p, x_j, v, w, nbmat, agh, need_x)
                g_w = g_w + g_w_pass
            if need_x:
                g_xa, g_xq = torch.split(g_x, [f, c], dim=-2)
                g_a = g_a + g_xa
                g_q = g_q + g_xq.sum(-1)
        if dense:
            return dense_matrices_grad_to_pairs(g_res_all, x_all, nbmat)
        return g_w


def _shell_sums_recorded(x: Tensor, w: Tensor, s_mat: Tensor, nbmat: Tensor,
                         agh: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Recorded shell sums by the dense shell matrices when there are any, else by the flat products."""
    if s_mat.numel() > 0:
        return dense_shell_sums_recorded(x, s_mat, agh)
    return flat_shell_sums_recorded(x, w, nbmat, agh)

