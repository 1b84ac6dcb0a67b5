"""Pictures people would rather look at than read: learning curves and parity plots (PNG)."""

from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..io_utils import atomic_write

UNITS = {"E": "kcal/mol", "F": "kcal/mol/Å", "q": "e", "s": "e"}
NAMES = {"E": "energy (residual)", "F": "force component", "q": "charge", "s": "spin charge"}


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def learning_curves(history: List[Dict[str, float]], path: Path) -> Path:
    """history: one dict per validation (keys epoch, iteration, train_loss, loss, fid{k}/E_rmse ...)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = [h["epoch"] for h in history]
    if any("train_loss" in h for h in history):
        ax1.plot(x, [h.get("train_loss", float("nan")) for h in history], "o-", label="train (epoch mean)")
    ax1.plot(x, [h.get("loss", float("nan")) for h in history], "s-", label="validation")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    keys = sorted({k for h in history for k in h if k.endswith("/E_rmse") or k.endswith("/F_rmse")})
    for key in keys:
        ax2.plot(x, [h.get(key, float("nan")) for h in history], "o-", label=key)
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation RMSE (kcal/mol, kcal/mol/Å)")
    if keys:
        ax2.legend(fontsize=8)
    fig.suptitle("aimnet2mult learning curves")
    return _save(fig, path)


def parity_plots(data: Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]], names: Dict[int, str],
                 out_dir: Path) -> List[Path]:
    """One PNG per fidelity with a panel per property: prediction against reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for k in sorted({k for k, _ in data}):
        props = [p for p in ("E", "F", "q", "s") if (k, p) in data]
        fig, axes = plt.subplots(1, len(props), figsize=(4.2 * len(props), 4), squeeze=False)
        for ax, p in zip(axes[0], props):
            ref, pred = (t.numpy() for t in data[(k, p)])
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.scatter(ref, pred, s=4, alpha=0.5)
            mae = abs(pred - ref).mean()
            ax.set_title(f"{NAMES[p]}: MAE {mae:.3g} {UNITS[p]}", fontsize=9)
            ax.set_xlabel(f"reference ({UNITS[p]})")
            ax.set_ylabel(f"predicted ({UNITS[p]})")
        fig.suptitle(f"fidelity {k} ({names.get(k, f'fidelity{k}')}), validation set")
        paths.append(_save(fig, out_dir / f"parity_fid{k}.png"))
    return paths
