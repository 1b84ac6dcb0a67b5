"""Neighbour lists for the flat layout: O(N) cell lists, periodic with integer cell shifts.

Two lists serve the network (see ``nbops``):

* short range (AEV cutoff, 5 Å): a FULL list converted to the padded matrix ``nbmat`` (N+1, M)
  with integer image shifts ``cell_shifts`` (N+1, M, 3); row N (the dummy atom) and unused slots
  hold N. The message-passing convolutions need every i -> j once per row.
* long range (Coulomb / D3): a HALF pair list ``pairs_lr`` (2, P) with ``cell_shifts_lr`` (P, 3):
  each unordered pair (including periodic images, and an atom with its own images when the cell is
  smaller than the cutoff) exactly once, no padding. For isolated molecules with the ``simple``
  Coulomb method it holds every pair of each molecule (no cutoff).

Image shifts are integer multiples of the lattice vectors: the Cartesian shift of a pair is
``cell_shifts @ cell`` and ``r_ij = x_j - x_i + shift``. Keeping them integer lets the potential
rebuild the Cartesian shifts from a strained cell (stress) and lets a Verlet list built once be
reused while atoms move and the cell stays the same. Pairs between atoms of different molecules
(``mol_idx``) are never listed.

The builder is a swappable TorchScript submodule of the potential with one interface,
``forward(coord, cell, pbc, mol_idx, n_mol, sr_cutoff, lr_cutoff) -> Dict[str, Tensor]``:

* :class:`TorchCellList` (default; pure TorchScript, so an exported file needs nothing but torch):
  a cell list in Cartesian bins of side ``cutoff / bins_per_cutoff``. Atoms are wrapped into the
  cell along its periodic directions, and "ghost" images (atom + integer lattice shift) are added
  wherever they can lie within the cutoff of a wrapped atom, so any cell shape (triclinic), cells
  narrower than the cutoff (several images of an atom, an atom paired with its own images) and
  partially periodic systems are exact: the pair set is that of a brute-force image sum. Bins
  are found by sorting integer bin keys and binary search (no dense grid, so sparse systems cost
  nothing); candidates are expanded in chunks of at most ``max_candidates`` so memory stays
  bounded for long cutoffs on large systems. Distances are computed in float64.
* :class:`aimnet2mult.nn.neighbors_vesin.VesinNeighbors`: the vesin-torch library. Its
  TorchScript class must be registered before such a file is loaded (``import vesin_torch``);
  exported potentials record that in ``requires_extensions``.

:class:`VerletNeighborList` (plain Python, for MD callers) caches a potential's lists with a skin.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .keys import Key

__all__ = ["TorchCellList", "cell_list_pairs", "all_pairs_within", "all_pairs_neighbor_matrix",
           "padded_neighbor_matrix", "all_pairs_half",
           "half_list_mask", "make_neighbor_list", "assemble_lists", "NEIGHBOR_LIST_LIBRARIES", "VerletNeighborList"]

#: names accepted by ``make_neighbor_list`` (and ``export_potential(neighbor_list=...)``)
NEIGHBOR_LIST_LIBRARIES = ["torch", "vesin"]


# ---------------------------------------------------------------------------------- shared helpers
def padded_neighbor_matrix(i: Tensor, j: Tensor, s: Tensor, n_atoms: int) -> Tuple[Tensor, Tensor]:
    """Full pair list -> (nbmat (N+1, M) int64 with empty slots = N, cell_shifts (N+1, M, 3))."""
    order = torch.argsort(i, stable=True)
    i = i[order]
    j = j[order]
    s = s[order]
    counts = torch.bincount(i, minlength=n_atoms)
    m = 1
    if i.shape[0] > 0:
        m = max(int(counts.max()), 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(i.shape[0], device=i.device) - start[i]
    nbmat = torch.full((n_atoms + 1, m), n_atoms, dtype=torch.long, device=i.device)
    nbmat[i, slot] = j
    shifts = torch.zeros((n_atoms + 1, m, 3), dtype=s.dtype, device=i.device)
    shifts[i, slot] = s
    return nbmat, shifts


def all_pairs_half(mol_idx: Tensor, n_mol: int) -> Tuple[Tensor, Tensor]:
    """Every pair i < j of each molecule (isolated molecules, no cutoff): (pairs (2, P), zero shifts
    (P, 3) int32). ``mol_idx`` (N,) must be sorted (atoms of a molecule contiguous)."""
    n = mol_idx.shape[0]
    dev = mol_idx.device
    if n_mol == 1:  # one molecule: the upper triangle, in the same (row-major) order, in one operator
        pairs = torch.triu_indices(n, n, 1, device=dev)
        return pairs, torch.zeros((pairs.shape[1], 3), dtype=torch.int32, device=dev)
    counts = torch.bincount(mol_idx, minlength=n_mol)
    start = torch.cumsum(counts, 0) - counts
    max_n = int(counts.max())
    k = torch.arange(max_n, device=dev).unsqueeze(0)
    i = torch.arange(n, device=dev).unsqueeze(1).expand(n, max_n)
    j = start[mol_idx].unsqueeze(1) + k
    valid = (k < counts[mol_idx].unsqueeze(1)) & (j > i)
    pairs = torch.stack([i[valid], j[valid]])
    return pairs, torch.zeros((pairs.shape[1], 3), dtype=torch.int32, device=dev)


def half_list_mask(i: Tensor, j: Tensor, s: Tensor) -> Tensor:
    """True for the representative of each unordered pair {(i, j, s), (j, i, -s)} of a full list:
    i < j, or i == j with the first non-zero component of s positive."""
    s0 = s[:, 0]
    s1 = s[:, 1]
    s2 = s[:, 2]
    positive = (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))
    return (i < j) | ((i == j) & positive)


def _lattice_frame(cell: Tensor, pbc: Tensor) -> Tensor:
    """(3, 3) float64 basis whose periodic rows are the cell's and whose non-periodic rows are
    orthonormal vectors completing them (the cell's rows there are ignored)."""
    dev = cell.device
    basis = torch.zeros(3, 3, dtype=torch.float64, device=dev)
    ortho: List[Tensor] = []
    for a in range(3):
        if bool(pbc[a]):
            basis[a] = cell[a]
            u = cell[a].clone()
            for e in ortho:
                u = u - (u * e).sum() * e
            ortho.append(u / torch.linalg.norm(u))
    eye = torch.eye(3, dtype=torch.float64, device=dev)
    for a in range(3):
        if not bool(pbc[a]):
            best = eye[0]
            best_norm = -1.0
            for c in range(3):
                u = eye[c].clone()
                for e in ortho:
                    u = u - (u * e).sum() * e
                norm = float(torch.linalg.norm(u))
                if norm > best_norm:
                    best_norm = norm
                    best = u
            unit = best / best_norm
            ortho.append(unit)
            basis[a] = unit
    return basis


def _stencil(reach: int, bin_size: float, cutoff: float, device: torch.device) -> Tensor:
    """Integer bin offsets (S, 3) whose bins can hold a point within ``cutoff`` of a point of the
    central bin (offsets whose closest approach is >= cutoff are dropped)."""
    r = torch.arange(-reach, reach + 1, device=device)
    offsets = torch.cartesian_prod(r, r, r).reshape(-1, 3)
    gap = (offsets.abs() - 1).clamp(min=0).to(torch.float64) * bin_size
    keep = (gap * gap).sum(1) < cutoff * cutoff
    return offsets[keep]


def _ghost_images(x: Tensor, cell: Tensor, pbc: Tensor, cutoff: float
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Wrap atoms into the cell (periodic directions) and list every image that can lie within
    ``cutoff`` of a wrapped atom.

    Returns xw (N, 3) wrapped positions, wrap (N, 3) int64 (x = xw + wrap @ cell), and the image
    points: atom index pj (P,), lattice shift t (P, 3) int64 and position pos (P, 3) =
    xw[pj] + t @ cell. Every atom's own wrapped position is among them (t = 0).
    """
    n = x.shape[0]
    dev = x.device
    eps = 1e-8
    basis = _lattice_frame(cell.detach().to(torch.float64).to(dev), pbc)
    inv = torch.linalg.inv(basis)  # columns b_a: fractional coordinate f_a = x . b_a
    frac = x @ inv
    pmask = pbc.to(torch.float64)
    wrap = torch.floor(frac) * pmask
    wrap = wrap + ((frac - wrap) >= 1.0).to(torch.float64) * pmask  # rounding guard
    fw = frac - wrap
    xw = x - wrap @ basis
    # a point within the cutoff of a wrapped atom has f_a within cutoff * |b_a| of their range
    reach_f = cutoff * torch.linalg.norm(inv, dim=0)  # (3,)
    f_lo = fw.min(0)[0] - reach_f - eps
    f_hi = fw.max(0)[0] + reach_f + eps
    lo = torch.ceil(f_lo.unsqueeze(0) - fw).to(torch.long)
    hi = torch.floor(f_hi.unsqueeze(0) - fw).to(torch.long)
    lo = torch.where(pbc.unsqueeze(0), lo, torch.zeros_like(lo))
    hi = torch.where(pbc.unsqueeze(0), hi, torch.zeros_like(hi))
    span = hi - lo + 1  # (N, 3), >= 1 (t = 0 always qualifies)
    per_atom = span.prod(1)
    pj = torch.repeat_interleave(torch.arange(n, device=dev), per_atom)
    first = torch.cumsum(per_atom, 0) - per_atom
    k = torch.arange(pj.shape[0], device=dev) - first[pj]
    s0 = span[pj, 0]
    s1 = span[pj, 1]
    t = torch.stack([lo[pj, 0] + k % s0, lo[pj, 1] + torch.div(k, s0, rounding_mode="floor") % s1,
                     lo[pj, 2] + torch.div(k, s0 * s1, rounding_mode="floor")], dim=1)
    pos = xw[pj] + t.to(torch.float64) @ basis
    return xw, wrap.to(torch.long), pj, t, pos


def _segments(sorted_keys: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Runs of equal values in a sorted 1-D tensor: (values, first index, length)."""
    n = sorted_keys.shape[0]
    is_first = torch.ones(n, dtype=torch.bool, device=sorted_keys.device)
    is_first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = torch.nonzero(is_first).squeeze(1)
    ends = torch.cat([starts[1:], torch.full((1,), n, dtype=torch.long, device=sorted_keys.device)])
    return sorted_keys[starts], starts, ends - starts


#: isolated systems up to this many atoms are listed by testing all pairs (measured on 2 CPU threads:
#: 17-216 µs against 330-590 µs for the cell list at 9-99 atoms; the cell list wins from ~160)
ALL_PAIRS_MAX_ATOMS = 128


def all_pairs_within(x: Tensor, mol: Tensor, cutoff: float, full_list: bool) -> Tuple[Tensor, Tensor]:
    """(i, j) of every pair of an isolated system (x (N, 3) float64 Å, mol (N,) molecule index)
    closer than ``cutoff`` Å, both directions when ``full_list`` else i < j. O(N²) memory and time:
    for small systems, where it beats the cell list's fixed cost."""
    d = x.unsqueeze(1) - x.unsqueeze(0)
    # the components added explicitly: a sum over the trailing size-3 dimension runs ~7x slower
    # (157 vs 23 µs at 99 atoms, float64)
    d2 = d[:, :, 0] * d[:, :, 0] + d[:, :, 1] * d[:, :, 1] + d[:, :, 2] * d[:, :, 2]
    close = (d2 < cutoff * cutoff) & (mol.unsqueeze(1) == mol.unsqueeze(0))
    if full_list:
        close.fill_diagonal_(False)
    else:
        close = torch.triu(close, diagonal=1)
    ij = torch.nonzero(close)
    return ij[:, 0], ij[:, 1]


def all_pairs_neighbor_matrix(x: Tensor, mol: Tensor, cutoff: float) -> Tuple[Tensor, Tensor]:
    """:func:`padded_neighbor_matrix` of the full list of :func:`all_pairs_within` (isolated
    system, x (N, 3) float64 Å, mol (N,) molecule index), built from the N x N neighbour mask
    directly: (nbmat (N+1, M) int64, neighbours of each atom in ascending order, empty slots = N;
    zero cell_shifts (N+1, M, 3) int32)."""
    n = x.shape[0]
    d = x.unsqueeze(1) - x.unsqueeze(0)
    d2 = d[:, :, 0] * d[:, :, 0] + d[:, :, 1] * d[:, :, 1] + d[:, :, 2] * d[:, :, 2]
    close = (d2 < cutoff * cutoff) & (mol.unsqueeze(1) == mol.unsqueeze(0))
    close.fill_diagonal_(False)
    counts = close.sum(1)
    m = max(int(counts.max()), 1)
    # a stable descending sort of the mask puts each row's neighbours first, in ascending order
    order = torch.sort(close.to(torch.uint8), dim=1, descending=True, stable=True)[1][:, :m]
    empty = torch.arange(m, device=x.device).unsqueeze(0) >= counts.unsqueeze(1)
    nbmat = torch.cat([order.masked_fill(empty, n), torch.full((1, m), n, dtype=torch.long, device=x.device)])
    return nbmat, torch.zeros((n + 1, m, 3), dtype=torch.int32, device=x.device)


def cell_list_pairs(coord: Tensor, cell: Tensor, pbc: Tensor, mol_idx: Tensor, cutoff: float,
                    full_list: bool, bins_per_cutoff: int = 0, max_candidates: int = 1 << 22,
                    all_pairs_max_atoms: int = ALL_PAIRS_MAX_ATOMS) -> Tuple[Tensor, Tensor, Tensor]:
    """(i, j, S) of every pair of atoms of the same molecule closer than ``cutoff`` Å.

    coord (N, 3) Å; cell (3, 3) Å, rows = lattice vectors (used along periodic directions only);
    pbc (3,) bool; mol_idx (N,) int molecule index (any order). S (P, 3) int32 image shifts:
    r_ij = x_j - x_i + S @ cell. ``full_list``: every ordered pair i -> j (both directions);
    otherwise each unordered pair once (``half_list_mask``). Self pairs (i, i, 0) are never
    listed; an atom and its own periodic images are.

    Bins are cubes of side cutoff / ``bins_per_cutoff`` (0 = chosen from the density); the atoms
    of one bin are tested against the points of its neighbour bins as one block (a batched matrix
    product gives the squared distances; candidates are re-checked exactly in float64), blocks
    of at most ``max_candidates`` query-point pairs at a time. Isolated systems of at most
    ``all_pairs_max_atoms`` atoms skip the bins and test all pairs (``all_pairs_within``).
    """
    dev = coord.device
    n = coord.shape[0]
    empty_i = torch.zeros(0, dtype=torch.long, device=dev)
    if n == 0:
        return empty_i, empty_i, torch.zeros(0, 3, dtype=torch.int32, device=dev)
    x = coord.detach().to(torch.float64)
    mol = mol_idx.to(torch.long).to(dev)
    pbc = pbc.to(torch.bool).to(dev)
    periodic = bool(pbc.any())
    if not periodic and n <= all_pairs_max_atoms:
        i, j = all_pairs_within(x, mol, cutoff, full_list)
        return i, j, torch.zeros(i.shape[0], 3, dtype=torch.int32, device=dev)
    if periodic:
        xw, wrap, pj, t, pos = _ghost_images(x, cell, pbc, cutoff)
    else:
        xw = x
        wrap = torch.zeros(n, 3, dtype=torch.long, device=dev)
        pj = torch.arange(n, device=dev)
        t = torch.zeros(n, 3, dtype=torch.long, device=dev)
        pos = x
    n_pts = pj.shape[0]

    # --- Cartesian bins keyed by (molecule, bx, by, bz); no dense grid (sorted keys + search)
    origin = pos.min(0)[0]
    ext = pos.max(0)[0] - origin
    extent = float(ext.max())
    sub = bins_per_cutoff
    if sub <= 0:  # aim at ~25 points per bin
        vol = float(torch.clamp(ext, min=cutoff).prod())
        per_cut3 = n_pts / vol * cutoff ** 3
        sub = min(max(int(round((per_cut3 / 25.0) ** (1.0 / 3.0))), 1), 3)
    n_mol = int(mol.max()) + 1
    max_dim = max(int((2.0 ** 60 / n_mol) ** (1.0 / 3.0)) - 2 * sub - 2, 4)
    bin_size = cutoff / sub * (1.0 + 1e-12)
    if extent / bin_size > max_dim:
        bin_size = extent / max_dim
    reach = int(math.ceil(cutoff / bin_size))
    stencil = _stencil(reach, bin_size, cutoff, dev)  # (S, 3)
    pbin = torch.floor((pos - origin) / bin_size).to(torch.long)
    dims = pbin.max(0)[0] + 1
    pkey = ((mol[pj] * dims[0] + pbin[:, 0]) * dims[1] + pbin[:, 1]) * dims[2] + pbin[:, 2]
    order = torch.argsort(pkey)
    ukeys, starts, counts = _segments(pkey[order])
    spos = pos[order]
    spj = pj[order]
    sshift = t[order] - wrap[spj]  # image shift relative to the unwrapped atom
    n_bins = ukeys.shape[0]

    # queries: the wrapped atoms, grouped by bin
    qbin = torch.floor((xw - origin) / bin_size).to(torch.long)
    qkey = ((mol * dims[0] + qbin[:, 0]) * dims[1] + qbin[:, 1]) * dims[2] + qbin[:, 2]
    qorder = torch.argsort(qkey)
    _, qstarts, qcounts = _segments(qkey[qorder])
    rep_atom = qorder[qstarts]
    n_qb = rep_atom.shape[0]
    n_st = stencil.shape[0]
    look = max(1, max_candidates // n_st)  # query bins per stencil look-up (bounded memory)
    n_cand = torch.zeros(n_qb, dtype=torch.long, device=dev)  # points to test per query bin
    b0 = 0
    while b0 < n_qb:
        b1 = min(n_qb, b0 + look)
        _, cnt0 = _stencil_bins(qbin[rep_atom[b0:b1]], mol[rep_atom[b0:b1]], stencil, dims, ukeys, starts,
                                counts, n_bins)
        n_cand[b0:b1] = cnt0.sum(1)
        b0 = b1
    # process query bins in order of decreasing size, so a block pads little
    border = torch.argsort(qcounts, descending=True)
    l_all = int(n_cand.max())
    cut2 = cutoff * cutoff
    tol = 1e-6 * cut2 + 1e-6

    out_i: List[Tensor] = []
    out_j: List[Tensor] = []
    out_s: List[Tensor] = []
    c0 = 0
    while c0 < n_qb:
        q_first = int(qcounts[border[c0]])
        c1 = min(n_qb, c0 + look, c0 + max(1, max_candidates // max(q_first * l_all, 1)))
        blk = border[c0:c1]
        nb = blk.shape[0]
        q_max = int(qcounts[blk].max())
        l_max = int(n_cand[blk].max())
        nb_start, cnt = _stencil_bins(qbin[rep_atom[blk]], mol[rep_atom[blk]], stencil, dims, ukeys, starts,
                                      counts, n_bins)
        # queries (nb, q_max) -> atom index, -1 = padding
        ar_q = torch.arange(q_max, device=dev)
        q_ok = ar_q.unsqueeze(0) < qcounts[blk].unsqueeze(1)
        q_sorted = (qstarts[blk].unsqueeze(1) + ar_q.unsqueeze(0)).clamp(max=n - 1)
        q_atom = torch.where(q_ok, qorder[q_sorted], torch.full_like(q_sorted, -1))
        # candidate points (nb, l_max) -> sorted point index, -1 = padding
        seg_end = torch.cumsum(cnt, 1)
        ar_l = torch.arange(l_max, device=dev)
        seg = torch.searchsorted(seg_end, ar_l.unsqueeze(0).expand(nb, l_max).contiguous(), right=True)
        p_ok = ar_l.unsqueeze(0) < n_cand[blk].unsqueeze(1)
        seg = seg.clamp(max=cnt.shape[1] - 1)
        within = ar_l.unsqueeze(0) - (seg_end.gather(1, seg) - cnt.gather(1, seg))
        p_idx = torch.where(p_ok, nb_start.gather(1, seg) + within, torch.zeros_like(seg))
        p_idx = p_idx.clamp(max=n_pts - 1)
        # squared distances relative to the first query of each bin (small numbers, accurate)
        ref = xw[qorder[qstarts[blk]]].unsqueeze(1)  # (nb, 1, 3)
        qp = xw[q_atom.clamp(min=0)] - ref  # (nb, q_max, 3)
        pp = spos[p_idx] - ref  # (nb, l_max, 3)
        d2 = (qp * qp).sum(2).unsqueeze(2) + (pp * pp).sum(2).unsqueeze(1) - 2.0 * torch.bmm(qp, pp.transpose(1, 2))
        mask = (d2 < cut2 + tol) & q_ok.unsqueeze(2) & p_ok.unsqueeze(1)
        if not full_list:
            mask = mask & (spj[p_idx].unsqueeze(1) >= q_atom.unsqueeze(2))
        hit = torch.nonzero(mask)
        qi = q_atom[hit[:, 0], hit[:, 1]]
        pi = p_idx[hit[:, 0], hit[:, 2]]
        # pairs within the rounding band of the cutoff: decide by the direct float64 distance
        band = torch.nonzero(d2[hit[:, 0], hit[:, 1], hit[:, 2]] > cut2 - tol).squeeze(1)
        if band.shape[0] > 0:
            diff = spos[pi[band]] - xw[qi[band]]
            outside = band[(diff * diff).sum(1) >= cut2]
            if outside.shape[0] > 0:
                inside = torch.ones(qi.shape[0], dtype=torch.bool, device=dev)
                inside[outside] = False
                qi = qi[inside]
                pi = pi[inside]
        j = spj[pi]
        s = sshift[pi] + wrap[qi]
        keep = (j != qi) | (s != 0).any(1)
        if not full_list:
            keep = keep & half_list_mask(qi, j, s)
        out_i.append(qi[keep])
        out_j.append(j[keep])
        out_s.append(s[keep].to(torch.int32))
        c0 = c1
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_s)


def _stencil_bins(qbin: Tensor, qmol: Tensor, stencil: Tensor, dims: Tensor, ukeys: Tensor, starts: Tensor,
                  counts: Tensor, n_bins: int) -> Tuple[Tensor, Tensor]:
    """For each query (Q,) and stencil offset (S,): (first sorted-point index, number of points)
    of that neighbour bin, (Q, S) each; 0 points for bins outside the grid or empty."""
    nb = qbin.unsqueeze(1) + stencil.unsqueeze(0)  # (Q, S, 3)
    inside = ((nb >= 0) & (nb < dims)).all(2)
    nb = nb.clamp(min=0)
    key = ((qmol.unsqueeze(1) * dims[0] + nb[..., 0]) * dims[1] + nb[..., 1]) * dims[2] + nb[..., 2]
    loc = torch.searchsorted(ukeys, key.reshape(-1)).reshape(key.shape).clamp(max=n_bins - 1)
    found = inside & (ukeys[loc] == key)
    cnt = torch.where(found, counts[loc], torch.zeros_like(loc))
    return starts[loc], cnt


def assemble_lists(n_atoms: int, sr: Tuple[Tensor, Tensor, Tensor], lr: Optional[Tuple[Tensor, Tensor, Tensor]],
                   mol_idx: Tensor, n_mol: int, lr_cutoff: float) -> Dict[str, Tensor]:
    """The potential's list dict from a builder's pairs: ``sr`` the full short-range (i, j, shifts),
    ``lr`` the half long-range (i, j, shifts) when lr_cutoff > 0 (all pairs of each molecule when
    lr_cutoff < 0, none when 0)."""
    nbmat, shifts = padded_neighbor_matrix(sr[0], sr[1], sr[2], n_atoms)
    out: Dict[str, Tensor] = {Key.NBMAT.value: nbmat, Key.CELL_SHIFTS.value: shifts}
    if lr_cutoff < 0.0:
        pairs, shifts_lr = all_pairs_half(mol_idx, n_mol)
        out[Key.PAIRS_LR.value] = pairs
        out[Key.CELL_SHIFTS_LR.value] = shifts_lr
    elif lr is not None:
        out[Key.PAIRS_LR.value] = torch.stack([lr[0], lr[1]])
        out[Key.CELL_SHIFTS_LR.value] = lr[2]
    return out


class TorchCellList(nn.Module):
    """Pure-TorchScript O(N) cell-list builder (the default; see the module docstring).

    ``forward(coord, cell, pbc, mol_idx, n_mol, sr_cutoff, lr_cutoff)``: coord (N, 3) Å; cell
    (3, 3) Å rows (zeros for isolated systems); pbc (3,) bool; mol_idx (N,) sorted molecule index;
    lr_cutoff: Å, -1 = all pairs of each molecule, 0 = no long-range list. Returns ``nbmat``,
    ``cell_shifts`` and, unless lr_cutoff == 0, ``pairs_lr``, ``cell_shifts_lr`` (int32 shifts).
    Isolated systems of at most ``all_pairs_max_atoms`` atoms are listed by testing all pairs
    (0 = always the cell list).
    """

    library: str
    bins_per_cutoff: int
    max_candidates: int
    all_pairs_max_atoms: int

    def __init__(self, bins_per_cutoff: int = 0, max_candidates: int = 1 << 22,
                 all_pairs_max_atoms: int = ALL_PAIRS_MAX_ATOMS):
        super().__init__()
        if bins_per_cutoff < 0 or max_candidates < 1 or all_pairs_max_atoms < 0:
            raise ValueError("bins_per_cutoff must be >= 0 (0 = automatic), max_candidates >= 1 and "
                             "all_pairs_max_atoms >= 0")
        self.library = "torch"
        self.bins_per_cutoff = int(bins_per_cutoff)
        self.max_candidates = int(max_candidates)
        self.all_pairs_max_atoms = int(all_pairs_max_atoms)

    @torch.jit.export
    def pairs(self, coord: Tensor, cell: Tensor, pbc: Tensor, mol_idx: Tensor, cutoff: float,
              full_list: bool) -> Tuple[Tensor, Tensor, Tensor]:
        return cell_list_pairs(coord, cell, pbc, mol_idx, cutoff, full_list, self.bins_per_cutoff,
                               self.max_candidates, self.all_pairs_max_atoms)

    def forward(self, coord: Tensor, cell: Tensor, pbc: Tensor, mol_idx: Tensor, n_mol: int,
                sr_cutoff: float, lr_cutoff: float) -> Dict[str, Tensor]:
        n = coord.shape[0]
        if 0 < n <= self.all_pairs_max_atoms and lr_cutoff <= 0.0 and not bool(pbc.any()):
            # small isolated systems: the short-range matrix straight from the all-pairs mask
            nbmat, shifts = all_pairs_neighbor_matrix(coord.detach().to(torch.float64), mol_idx.to(torch.long),
                                                      sr_cutoff)
            out: Dict[str, Tensor] = {Key.NBMAT.value: nbmat, Key.CELL_SHIFTS.value: shifts}
            if lr_cutoff < 0.0:
                out[Key.PAIRS_LR.value], out[Key.CELL_SHIFTS_LR.value] = all_pairs_half(mol_idx, n_mol)
            return out
        sr = self.pairs(coord, cell, pbc, mol_idx, sr_cutoff, True)
        lr: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        if lr_cutoff > 0.0:
            lr = self.pairs(coord, cell, pbc, mol_idx, lr_cutoff, False)
        return assemble_lists(coord.shape[0], sr, lr, mol_idx, n_mol, lr_cutoff)


def make_neighbor_list(library: str = "torch") -> nn.Module:
    """The neighbour-list submodule for ``library``: 'torch' (TorchCellList, default; exported
    files need only torch) or 'vesin' (vesin-torch; loading needs ``import vesin_torch``)."""
    lib = str(library).lower()
    if lib in ("torch", "cell_list", "torch_cell_list"):
        return TorchCellList()
    if lib in ("vesin", "vesin_torch", "vesin-torch"):
        from .neighbors_vesin import VesinNeighbors

        return VesinNeighbors()
    raise ValueError(f"unknown neighbour-list library {library!r}; choose one of {', '.join(NEIGHBOR_LIST_LIBRARIES)}")


class VerletNeighborList:
    """Verlet-skin cache of a potential's neighbour lists, for MD callers (plain Python).

    The lists are built with every cutoff enlarged by ``skin`` (Å) and reused until an atom has
    moved more than ``skin / 2`` since the last build (then no pair can have crossed into a
    cutoff unseen), or the cell, pbc, atom count or molecule assignment changed. Pairs beyond a
    cutoff contribute exactly zero (AEV cosine cutoff, DSF, switched D3; Ewald drops real-space
    pairs beyond its cutoff), so results equal those of fresh lists.

    Usage::

        nl = VerletNeighborList(potential, skin=1.0)
        for step in ...:
            out = potential(nl.update(inp))     # inp: flat input dict (coord (N, 3), cell, pbc, ...)

    ``potential`` is an in-memory or TorchScript potential (``aimnet2mult.export``); its
    ``neighbor_lists`` method builds the lists (with the potential's own builder, the pure-torch
    cell list by default). ``builds`` counts the rebuilds.
    """

    def __init__(self, potential, skin: float = 1.0):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.potential = potential
        self.skin = float(skin)
        self.builds = 0
        self._ref: Optional[Tensor] = None
        self._key: Optional[List] = None
        self._lists: Dict[str, Tensor] = {}

    def _state_key(self, data: Dict[str, Tensor]) -> List:
        cell = data.get(Key.CELL.value)
        pbc = data.get(Key.PBC.value)
        mol = data.get(Key.MOL_IDX.value)
        return [int(data[Key.COORD.value].shape[0]),
                None if cell is None else cell.detach().to(torch.float64).cpu().reshape(-1).tolist(),
                None if pbc is None else pbc.detach().cpu().reshape(-1).tolist(),
                None if mol is None else mol.detach().cpu().tolist()]

    def needs_rebuild(self, data: Dict[str, Tensor]) -> bool:
        if self._ref is None or self._key != self._state_key(data):
            return True
        disp = (data[Key.COORD.value].detach().to(torch.float64) - self._ref).norm(dim=-1)
        return bool(disp.numel() > 0 and float(disp.max()) > 0.5 * self.skin)

    def update(self, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``data`` plus the (possibly cached) neighbour lists, ready for the potential."""
        coord = data[Key.COORD.value]
        if coord.dim() != 2:
            raise ValueError("VerletNeighborList works on flat input: 'coord' must be (N, 3)")
        if self.needs_rebuild(data):
            cell: Optional[Tensor] = data.get(Key.CELL.value)
            pbc: Optional[Tensor] = data.get(Key.PBC.value)
            mol: Optional[Tensor] = data.get(Key.MOL_IDX.value)
            self._lists = dict(self.potential.neighbor_lists(coord.detach(), cell, pbc, mol, self.skin))
            self._ref = coord.detach().to(torch.float64).clone()
            self._key = self._state_key(data)
            self.builds += 1
        out = dict(data)
        out.update(self._lists)
        return out
