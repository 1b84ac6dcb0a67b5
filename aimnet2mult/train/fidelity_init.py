"""Start one fidelity from another: the schedule that makes cheap labels help an expensive fidelity.

``fidelity_schedule`` in the training configuration::

    fidelity_schedule:
      pretrain_epochs: 8        # epochs 1..8 draw no molecules of the init_from targets
      init_from: {0: 1}         # then fidelity 0 starts from fidelity 1's trained parameters

During the first ``pretrain_epochs`` epochs the sampler draws only from the fidelities that are not
targets of ``init_from`` (the cheap levels). When epoch ``pretrain_epochs + 1`` starts, each target
fidelity's element-embedding rows and readout are overwritten with its source's:

* embedding rows ``Z + target * offset`` <- ``Z + source * offset`` for every Z >= 1;
* per-fidelity readouts: the whole head (MLP and its per-element shifts) <- the source's head;
  one shared readout: the shift rows of the target <- the source's.

The shifts are copied unchanged, so the target's *residual* energy (total minus its own SAE)
starts equal to the source's: the target then predicts source-residual + target SAE, and joint
training learns only the difference between the two levels (much like Delta-learning, without
needing the cheap method at inference). With ``pretrain_epochs: 0`` the copy happens before the
first step (useful only with ``--load``, where the source fidelity is already trained).
"""

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from ..model_config import ConfigError


def parse_schedule(cfg: Mapping[str, Any], n_fidelities: int, epochs: int) -> Dict[str, Any]:
    """Validated ``{"pretrain_epochs": int, "init_from": {target: source}}``."""
    sched = dict(cfg or {})
    pre = sched.get("pretrain_epochs", 0)
    if isinstance(pre, bool) or not isinstance(pre, int) or pre < 0:
        raise ConfigError(f"fidelity_schedule.pretrain_epochs must be a non-negative integer, got {pre!r}")
    init: Dict[int, int] = {}
    for key, value in (sched.get("init_from") or {}).items():
        try:
            t, s = int(key), int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"fidelity_schedule.init_from: {key!r}: {value!r} is not a pair of fidelity "
                              "indices (target: source)") from None
        for name, f in (("target", t), ("source", s)):
            if not 0 <= f < n_fidelities:
                raise ConfigError(f"fidelity_schedule.init_from.{key}: {name} fidelity {f} does not exist "
                                  f"(fidelities 0..{n_fidelities - 1})")
        if t == s:
            raise ConfigError(f"fidelity_schedule.init_from.{key}: a fidelity cannot start from itself")
        init[t] = s
    chained = sorted(set(init) & set(init.values()))
    if chained:
        raise ConfigError(f"fidelity_schedule.init_from: fidelit{'y' if len(chained) == 1 else 'ies'} "
                          f"{chained} are both target and source; give each target a trained source")
    if pre > 0 and not init:
        raise ConfigError("fidelity_schedule.pretrain_epochs > 0 needs init_from (which fidelities wait)")
    if pre >= epochs and init:
        raise ConfigError(f"fidelity_schedule.pretrain_epochs ({pre}) must be smaller than trainer.epochs "
                          f"({epochs}), else the target fidelities are never trained")
    return {"pretrain_epochs": pre, "init_from": init}


@torch.no_grad()
def copy_fidelity(model: nn.Module, target: int, source: int) -> List[str]:
    """Overwrite fidelity ``target``'s embedding rows and readout with fidelity ``source``'s.

    ``model``: a :class:`~aimnet2mult.nn.model.MultiFidelityAIMNet2`. Returns log lines.
    """
    off = int(model.fidelity_offset)
    n = int(model.num_fidelities)
    for f in (target, source):
        if not 0 <= f < n:
            raise ValueError(f"fidelity {f} does not exist (model has fidelities 0..{n - 1})")
    emb = model.backbone.embedding.weight
    emb[target * off + 1:(target + 1) * off] = emb[source * off + 1:(source + 1) * off].clone()  # row 0: padding
    lines = [f"fidelity {target}: element embeddings copied from fidelity {source}"]
    if model.use_fidelity_readouts:
        dst, src = model.readouts[target], model.readouts[source]
        for p_dst, p_src in zip(dst.parameters(), src.parameters()):
            p_dst.copy_(p_src)
        lines.append(f"fidelity {target}: readout head (MLP and shifts) copied from fidelity {source}")
    else:
        shifts = model.readouts[0].shifts
        shifts[target * off + 1:(target + 1) * off] = shifts[source * off + 1:(source + 1) * off].clone()
        lines.append(f"fidelity {target}: shared-readout shift rows copied from fidelity {source}")
    return lines
