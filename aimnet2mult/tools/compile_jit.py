"""Compile one fidelity of a trained model into a TorchScript potential (seed-compatible CLI).

    python -m aimnet2mult.tools.compile_jit --weights model.pt --output compiled_model \
        --fidelity-level 0 [--model model.yaml --fidelity-offset 200 --num-fidelities 3 \
        --use-fidelity-readouts true --sae sae_fid0.yaml] \
        [--dispersion d3bj --dispersion-functional wb97m | --dispersion none] \
        [--coulomb simple|dsf|ewald|none [--dsf-alpha A --dsf-rc RC | --ewald-accuracy ACC]] \
        [--neighbor-list torch | vesin]

Settings the checkpoint records (architecture, offset, number of fidelities, readout mode, SAE)
are optional; when given they must agree with the checkpoint. Without ``--dispersion`` the
dispersion recorded in the checkpoint for that fidelity is used. Output: ``{output}_fid{K}.jpt``
(or ``output`` itself when it ends in ``.jpt``), written atomically. ``--neighbor-list vesin``
builds the flat-layout neighbour lists with vesin-torch (the file then needs ``import vesin_torch``
before ``torch.jit.load``); the default pure-TorchScript cell list needs nothing but torch.
``--coulomb`` overrides the Coulomb method of the model configuration for this file (``dsf`` or
``ewald`` for periodic MD; ``simple`` is for isolated molecules only).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..checkpoint import CheckpointError, fidelity_entry, load_checkpoint
from ..model_config import COULOMB_METHODS, ConfigError, model_config


def str2bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="trained checkpoint (.pt)")
    p.add_argument("--model", help="model YAML (optional; must agree with the checkpoint)")
    p.add_argument("--output", required=True, help="output prefix (writes PREFIX_fid{K}.jpt) or a .jpt path")
    p.add_argument("--fidelity-level", required=True, help="fidelity to export (index or name)")
    p.add_argument("--fidelity-offset", type=int, help="atomic-number offset between fidelities (check)")
    p.add_argument("--num-fidelities", type=int, help="number of fidelities of the model (check)")
    p.add_argument("--use-fidelity-readouts", type=str2bool, help="per-fidelity readouts true/false (check)")
    p.add_argument("--sae", help="SAE YAML of this fidelity (check, or required for a bare state dict)")
    p.add_argument("--dispersion", choices=["none", "d3bj", "d4"], help="dispersion to bake in (default: recorded)")
    p.add_argument("--dispersion-functional",
                   help="D3(BJ) / D4 parameters by functional name (e.g. wb97m, b3lyp, r2scan)")
    for name in ("s6", "s8", "a1", "a2", "s9"):
        p.add_argument(f"--dispersion-{name}", type=float, help=f"custom D3(BJ) / D4 {name}")
    p.add_argument("--atm", action="store_true",
                   help="D3(BJ): add the three-body ATM term (s9 from the database); D4 has it by default")
    p.add_argument("--no-atm", action="store_true", help="D4: two-body only (s9 = 0)")
    p.add_argument("--coulomb", choices=list(COULOMB_METHODS),
                   help="Coulomb method baked into the file (default: the model configuration's)")
    p.add_argument("--dsf-alpha", type=float, help="DSF damping alpha (1/Å, default 0.2)")
    p.add_argument("--dsf-rc", type=float, help="DSF cutoff (Å, default 15)")
    p.add_argument("--ewald-accuracy", type=float, help="Ewald relative accuracy (default 1e-8)")
    p.add_argument("--neighbor-list", choices=["torch", "vesin"], default="torch",
                   help="neighbour-list builder inside the potential: torch (pure TorchScript cell list, "
                        "default; the file loads with a plain torch.jit.load) or vesin (vesin-torch; loading "
                        "needs 'import vesin_torch' first, recorded in the metadata)")


def read_sae(path: str) -> Dict[int, float]:
    from ..elements import atomic_number
    from ..model_config import read_yaml

    raw = read_yaml(path)
    out: Dict[int, float] = {}
    for key, value in raw.items():
        try:
            z = atomic_number(key)
            out[z] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: entry {key!r}: {value!r} is not 'element: energy in eV'") from None
    if not out:
        raise ConfigError(f"{path}: SAE file has no entries")
    return out


def _bare_state_checkpoint(args, path: str) -> Dict[str, Any]:
    """A checkpoint from a bare state dict plus the command-line settings."""
    import torch

    from ..checkpoint import make_checkpoint
    from ..nn.model import MultiFidelityAIMNet2

    missing = [f for f, v in (("--model", args.model), ("--num-fidelities", args.num_fidelities),
                              ("--fidelity-offset", args.fidelity_offset),
                              ("--use-fidelity-readouts", args.use_fidelity_readouts), ("--sae", args.sae))
               if v is None]
    if missing:
        raise CheckpointError(f"{path} is a bare state dict, not a self-describing checkpoint: also give "
                              + ", ".join(missing))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    cfg = model_config(args.model, num_fidelities=args.num_fidelities, fidelity_offset=args.fidelity_offset,
                       use_fidelity_readouts=args.use_fidelity_readouts)
    model = MultiFidelityAIMNet2(cfg)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not match {args.model}: missing {result.missing_keys[:6]}, "
                              f"unexpected {result.unexpected_keys[:6]}")
    k = int(args.fidelity_level)
    fids = [fidelity_entry(i, sae=read_sae(args.sae) if i == k else {}) for i in range(cfg["num_fidelities"])]
    return make_checkpoint(model, cfg, fids)


def _check_agreement(args, ckpt: Dict[str, Any], k: int) -> None:
    cfg = ckpt["model_config"]
    problems: List[str] = []
    for flag, key, value in (("--fidelity-offset", "fidelity_offset", args.fidelity_offset),
                             ("--num-fidelities", "num_fidelities", args.num_fidelities),
                             ("--use-fidelity-readouts", "use_fidelity_readouts", args.use_fidelity_readouts)):
        if value is not None and value != cfg[key]:
            problems.append(f"{flag} {value} disagrees with the checkpoint ({key} = {cfg[key]})")
    if args.model:
        given = model_config(args.model, num_fidelities=cfg["num_fidelities"],
                             fidelity_offset=cfg["fidelity_offset"],
                             use_fidelity_readouts=cfg["use_fidelity_readouts"])
        diff = [key for key in given if key not in ("shift_dtype",) and given[key] != cfg.get(key)]
        if diff:
            problems.append(f"--model {args.model} disagrees with the checkpoint in: "
                            + ", ".join(f"{d} ({given[d]!r} vs {cfg.get(d)!r})" for d in diff))
    if args.sae:
        sae = read_sae(args.sae)
        recorded = {int(z): float(v) for z, v in ckpt["fidelities"][k]["sae"].items()}
        if set(sae) != set(recorded) or any(abs(sae[z] - recorded[z]) > 1e-6 for z in sae):
            problems.append(f"--sae {args.sae} disagrees with the SAE recorded for fidelity {k}")
    if problems:
        raise CheckpointError("; ".join(problems))


def dispersion_spec(args) -> Any:
    from ..export import RECORDED

    custom = {n: getattr(args, f"dispersion_{n}") for n in ("s6", "s8", "a1", "a2", "s9")}
    method = args.dispersion
    atm = bool(getattr(args, "atm", False))
    no_atm = bool(getattr(args, "no_atm", False))
    if method is None and (args.dispersion_functional or any(v is not None for v in custom.values())):
        method = "d3bj"
    if method is None:
        if atm or no_atm:
            raise ValueError("--atm / --no-atm need --dispersion d3bj or d4")
        return RECORDED
    if method == "none":
        if args.dispersion_functional or any(v is not None for v in custom.values()) or atm or no_atm:
            raise ValueError("--dispersion none contradicts the dispersion parameters given")
        return None
    if method == "d3bj" and no_atm:
        raise ValueError("--no-atm is for --dispersion d4 (D3(BJ) has no ATM term unless --atm)")
    if method == "d4" and atm:
        raise ValueError("--atm is for --dispersion d3bj (D4 has the ATM term by default; --no-atm removes it)")
    if args.dispersion_functional:
        if any(custom[n] is not None for n in ("s6", "s8", "a1", "a2")):
            raise ValueError("give either --dispersion-functional or custom --dispersion-s6/-s8/-a1/-a2, not both")
        return {"method": method, "functional": args.dispersion_functional,
                "atm": (not no_atm) if method == "d4" else atm}
    if any(custom[n] is None for n in ("s6", "s8", "a1", "a2")):
        raise ValueError(f"--dispersion {method} needs --dispersion-functional or all of "
                         "--dispersion-s6, --dispersion-s8, --dispersion-a1, --dispersion-a2")
    spec: Dict[str, Any] = {"method": method, **{n: v for n, v in custom.items() if v is not None}}
    if no_atm:
        spec["s9"] = 0.0
    return spec


def coulomb_spec(args) -> Any:
    """The ``coulomb`` argument of ``export_potential`` from --coulomb and its parameters."""
    from ..export import RECORDED

    params = {key: getattr(args, key, None) for key in ("dsf_alpha", "dsf_rc", "ewald_accuracy")}
    params = {k: v for k, v in params.items() if v is not None}
    method = getattr(args, "coulomb", None)
    if method is None:
        if params:
            raise ValueError("--dsf-alpha/--dsf-rc/--ewald-accuracy need --coulomb dsf or ewald")
        return RECORDED
    wrong = [k for k in params if not k.startswith(method + "_")]
    if wrong:
        raise ValueError(f"--coulomb {method} does not take --{wrong[0].replace('_', '-')}")
    return {"method": method, **params}


def _load(args) -> Dict[str, Any]:
    path = str(args.weights)
    try:
        return load_checkpoint(path)
    except CheckpointError:
        if not Path(path).is_file():
            raise
        import torch
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raw = None
        is_state = isinstance(raw, dict) and "format" not in raw and all(
            isinstance(v, torch.Tensor) for v in raw.get("model", raw).values())
        if not is_state:
            raise
        return _bare_state_checkpoint(args, path)


def run(args) -> Path:
    from ..checkpoint import checkpoint_hash, fidelity_index
    from ..export import export_potential
    from ..io_utils import refuse_to_overwrite_inputs

    ckpt = _load(args)
    k = fidelity_index(ckpt, args.fidelity_level)
    output = args.output if str(args.output).endswith(".jpt") else f"{args.output}_fid{k}.jpt"
    refuse_to_overwrite_inputs([output], [args.weights], "compile --output")
    if args.num_fidelities is not None and k >= args.num_fidelities:
        raise CheckpointError(f"--fidelity-level {k} >= --num-fidelities {args.num_fidelities}")
    _check_agreement(args, ckpt, k)
    return export_potential(ckpt, k, args.output, dispersion=dispersion_spec(args),
                            source_hash=checkpoint_hash(args.weights), coulomb=coulomb_spec(args),
                            neighbor_list=getattr(args, "neighbor_list", None) or "torch")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aimnet2mult.tools.compile_jit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        out = run(args)
    except (CheckpointError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
