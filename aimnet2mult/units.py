"""Physical constants and unit conversions: the one place for them.

Internal units are Å, eV and elementary charges e. Conversions happen only at the boundaries
(D3 works in Bohr/Hartree inside its module; OpenMM wants nm and kJ/mol).

Constants are CODATA 2018. OpenMM uses the same CODATA 2018 value for eV -> kJ/mol
(96.48533212331); ASE 3.x uses CODATA 2014 (96.4853328825), a relative difference of 7.9e-9 that
cross-checks between ASE and OpenMM must allow for.
"""

BOHR_IN_ANGSTROM = 0.529177210903
ANGSTROM_TO_BOHR = 1.0 / BOHR_IN_ANGSTROM
HARTREE_IN_EV = 27.211386245988
EV_TO_HARTREE = 1.0 / HARTREE_IN_EV

#: e^2 / (4 pi eps0) in eV * Å
COULOMB_CONSTANT = 14.399645478425668

#: OpenMM boundary: 1 eV in kJ/mol (CODATA 2018, as OpenMM's own unit system) and 1 nm in Å.
EV_TO_KJ_PER_MOL = 96.48533212331
NM_TO_ANGSTROM = 10.0

#: eV -> kcal/mol, used for training metrics as in the original description.
EV_TO_KCAL_PER_MOL = 23.060547830619026

#: Atoms closer than this (Å) count as coincident: the exported potential refuses such input and
#: the training data loader refuses such molecules.
MIN_ATOM_DISTANCE = 0.1

#: Boltzmann constant in eV/K (CODATA 2018, exact), for MD temperatures.
BOLTZMANN_EV_PER_K = 8.617333262e-5
