"""Drivers that connect aimnet2mult potentials to other MD engines (i-PI, ...)."""
