"""Names of the data-dict entries that the model, the energy terms and the potential pass to each
other, one constant per entry with its shape and unit.

TorchScript cannot read module-level ``str`` constants, but it inlines Enum values, so the code
reads ``data[Key.COORD.value]``. Shapes: A atoms (flat layout) or (B, N) molecules x atoms (dense,
padded); M neighbour slots per atom; P pairs of the long-range half list; n_mol molecules.
"""

from enum import Enum


class Key(Enum):
    # ---- input
    COORD = "coord"  # (A, 3) or (B, N, 3) Å
    NUMBERS = "numbers"  # (A,) or (B, N) atomic numbers, 0 = padding
    CHARGE = "charge"  # (n_mol,) total charge, e
    MULT = "mult"  # (n_mol,) spin multiplicity
    FIDELITY = "fidelity"  # (n_mol,) fidelity index of each molecule
    MOL_IDX = "mol_idx"  # (A,) molecule of each atom (flat layout)
    CELL = "cell"  # (3, 3) or (n_mol, 3, 3) Å, rows = lattice vectors
    PBC = "pbc"  # (3,) bool, periodic directions
    # ---- short-range neighbour matrix (flat layout) and its geometry
    NBMAT = "nbmat"  # (A, M) neighbour index per slot (the model's input has one padding atom last)
    SHIFTS = "shifts"  # (A, M, 3) Å, the periodic-image offset of each nbmat pair (cell_shifts @ cell)
    CELL_SHIFTS = "cell_shifts"  # (A, M, 3) integer image counts of the nbmat pairs (neighbour lists)
    D_IJ = "d_ij"  # (A, M) or (B, N, N) pair distances, Å
    U_IJ = "u_ij"  # (A, M, 3) or (B, N, N, 3) unit vectors from i to j
    PAIR_MASK = "pair_mask"  # like d_ij, True = no pair
    # ---- long-range half list (flat layout)
    PAIRS_LR = "pairs_lr"  # (2, P) atom indices i < j (or periodic images)
    SHIFTS_LR = "shifts_lr"  # (P, 3) Å image offsets
    CELL_SHIFTS_LR = "cell_shifts_lr"  # (P, 3) integer image counts
    D_IJ_LR = "d_ij_lr"  # (P,) Å
    PAIR_MASK_LR = "pair_mask_lr"  # (P,) True = no pair
    # ---- hand-written gradient seam between the model and the potential
    VJP_DISTANCE_GRAD = "vjp_distance_grad"  # (A, M) dE/dd_ij of the network, eV/Å
    VJP_DIRECTION_GRAD = "vjp_direction_grad"  # (A, M, 3) dE/du_ij of the network, eV
    VJP_LR_DISTANCE_GRAD = "vjp_lr_distance_grad"  # (P,) dE/dd of the Coulomb term, eV/Å
    # ---- outputs
    ENERGY = "energy"  # (n_mol,) float64 eV
    ATOMIC_ENERGIES = "atomic_energies"  # (A,) or (B, N) float64 eV
    FORCES = "forces"  # like coord, eV/Å
    STRESS = "stress"  # (3, 3) or (n_mol, 3, 3) eV/Å³
    CHARGES = "charges"  # (A,) or (B, N) partial charges, e
    SPIN_CHARGES = "spin_charges"  # like charges: alpha - beta charge (open-shell models)
    DISPERSION_ENERGY = "dispersion_energy"  # (n_mol,) float64 eV
