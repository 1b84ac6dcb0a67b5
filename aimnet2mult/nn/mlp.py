"""Multilayer perceptrons with GELU (exact erf form) between layers."""

from typing import List

from torch import nn


def make_mlp(n_in: int, hidden: List[int], n_out: int, last_activation: bool = False) -> nn.Sequential:
    """Linear(n_in, h0) GELU ... Linear(h_last, n_out) [GELU if last_activation].

    Layout (Linear at even indices, GELU at odd ones) matches the official AIMNet2 files.
    """
    layers: List[nn.Module] = []
    sizes = [n_in] + list(hidden)
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(a, b))
        layers.append(nn.GELU())
    layers.append(nn.Linear(sizes[-1], n_out))
    if last_activation:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)
