"""Training orchestration: data -> model -> ignite trainer -> checkpoints, logs and plots.

Files written (``--save runs/model.pt``):
  runs/model.pt               final checkpoint (self-describing; includes the training state, so
                              ``--resume runs/model.pt`` continues exactly)
  runs/model_config.yaml      the final configuration (also stored inside the checkpoint)
  runs/model_run/             train.log, last.pt (every epoch and on interruption), best_*.pt
                              (n_saved best by validation loss), history.json,
                              learning_curves.png, parity_fid{k}.png
"""

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .. import __version__
from ..checkpoint import (
    LABELLED_OUTPUTS,
    CheckpointError,
    fidelity_entry,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from ..io_utils import atomic_write_text
from ..model_config import ConfigError, model_config
from ..nn.model import MultiFidelityAIMNet2
from .config import dump_config, num_fidelities
from .engine import (
    EpochData,
    TrainStep,
    build_optimizer,
    build_scheduler,
    current_lrs,
    evaluate,
    plain_state,
    rng_state,
    set_rng_state,
    summarize,
    unwrap,
)
from .fidelity_init import copy_fidelity, parse_schedule
from .loss import MaskedMultiTaskLoss
from .resume_check import data_fingerprint, resume_differences
from .transfer import transfer_weights

log = logging.getLogger("aimnet2mult.train")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after writing last.pt; ``signum`` is the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def setup_logging(log_file: Optional[Path], rank: int) -> None:
    root = logging.getLogger("aimnet2mult")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    if rank != 0:
        root.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.propagate = False


def init_distributed(device: torch.device):
    """(world_size, rank) from torchrun's environment; gloo on CPU, NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda requested but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}") if name == "cuda" else torch.device(name)
    return torch.device(name)


def build_model_config(cfg: Dict[str, Any], model_yaml: Optional[str],
                       source: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    fid = dict(num_fidelities=num_fidelities(cfg), fidelity_offset=int(cfg["fidelity_offset"]),
               use_fidelity_readouts=bool(cfg["use_fidelity_readouts"]))
    if model_yaml:
        return model_config(model_yaml, **fid)
    if source is not None:
        base = {k: v for k, v in source["model_config"].items() if k not in fid}
        base["shift_dtype"] = "float64"
        return model_config(base, **fid)
    return model_config(None, **fid)


def load_source(path: str) -> Dict[str, Any]:
    """--load source: a checkpoint, or an official AIMNet2 TorchScript ensemble (member 0)."""
    if str(path).endswith(".jpt"):
        from ..import_official import official_member_checkpoint

        return official_member_checkpoint(path, 0)
    return load_checkpoint(path)


def fidelity_table(cfg: Dict[str, Any], info: Dict[str, Any]) -> List[Dict[str, Any]]:
    from ..export import resolve_dispersion

    data = cfg["data"]
    table = []
    for k in range(num_fidelities(cfg)):
        name = cfg["fidelity_names"].get(k) or Path(data["fidelity_datasets"][k]).stem
        disp_spec = data["dispersion"].get(k)
        disp = resolve_dispersion(disp_spec, None) if disp_spec not in (None, "none") else None
        table.append(fidelity_entry(k, name, sae=info["sae"][k], elements=info["elements"][k],
                                    labels_include_dispersion=bool(data["labels_include_dispersion"].get(k, False)),
                                    dispersion=disp,
                                    trained_outputs=[o for o in LABELLED_OUTPUTS if o in info["labels"][k]]))
    return table


class Trainer:
    """Holds everything of one run; ``run()`` trains and returns the final checkpoint path."""

    def __init__(self, cfg: Dict[str, Any], save: str, model_yaml: Optional[str] = None,
                 load: Optional[str] = None, resume: Optional[str] = None, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.save_path = Path(save).resolve()
        self.run_dir = self.save_path.parent / f"{self.save_path.stem}_run"
        self.device = pick_device(str(cfg.get("device", "auto")))
        self.world, self.rank = init_distributed(self.device)
        setup_logging(self.run_dir / "train.log", self.rank)
        if cfg.get("deterministic"):
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(int(cfg["seed"]))

        from ..data.loaders import build_loaders

        self.schedule = parse_schedule(cfg.get("fidelity_schedule"), num_fidelities(cfg), int(cfg["trainer"]["epochs"]))
        paused = {t: self.schedule["pretrain_epochs"] for t in self.schedule["init_from"]}
        self.train_loader, self.val_loader, self.info = build_loaders(
            cfg["data"], int(cfg["seed"]), int(cfg["fidelity_offset"]), num_replicas=self.world, rank=self.rank,
            paused_until_epoch=paused)
        for k in range(num_fidelities(cfg)):
            log.info("fidelity %d: %s, %d train / %d val molecules, labels %s, SAE %s", k,
                     self.info["files"][k], self.info["n_train"][k], self.info["n_val"].get(k, 0),
                     ",".join(self.info["labels"][k]) or "energy only", self.info["sae_sources"][k])

        self.data_fingerprint = data_fingerprint(self.info)
        self.resume_ckpt = load_checkpoint(resume) if resume else None
        source = load_source(load) if load else None
        if self.resume_ckpt is not None:
            self.model_cfg = dict(self.resume_ckpt["model_config"])
            if self.model_cfg["num_fidelities"] != num_fidelities(cfg):
                raise CheckpointError(f"--resume {resume}: checkpoint has {self.model_cfg['num_fidelities']} "
                                      f"fidelities, the configuration {num_fidelities(cfg)}")
            diffs = resume_differences(self.resume_ckpt, cfg, model_yaml, self.data_fingerprint)
            if diffs:
                raise CheckpointError(f"--resume {resume}: the run to resume differs from the checkpoint's run in: "
                                      + "; ".join(diffs) + " (to start a new run from its weights use --load)")
        else:
            self.model_cfg = build_model_config(cfg, model_yaml, source)
        spin = self.info.get("open_shell_data", {})
        if spin and int(self.model_cfg["num_charge_channels"]) == 1:
            f, (path, m, n) = sorted(spin.items())[0]
            raise ConfigError(f"fidelity {f}: {path} has {n} molecule(s) with multiplicity != 1 (e.g. {m:g}), but "
                              "the model is closed-shell (num_charge_channels: 1) and would ignore 'mult'; use "
                              "num_charge_channels: 2 in the model YAML or remove those molecules")
        torch.manual_seed(int(cfg["seed"]))
        model = MultiFidelityAIMNet2(self.model_cfg)
        if source is not None and self.resume_ckpt is None:
            for line in transfer_weights(model, self.model_cfg, self.info["sae"], source):
                log.info("--load %s: %s", load, line)
        if self.resume_ckpt is not None:
            model.load_state_dict(self.resume_ckpt["state_dict"], strict=True)
        self.fidelities = fidelity_table(cfg, self.info)
        model.to(self.device)
        self.optimizer = build_optimizer(model, cfg["optimizer"])
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.model = model
        self.scheduler, self.scheduler_mode = build_scheduler(self.optimizer, cfg.get("scheduler"))
        try:
            self.loss_fn = MaskedMultiTaskLoss(cfg["loss"]["kwargs"]["components"],
                                               cfg["loss"]["kwargs"].get("fidelity_components"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        missing = sorted(set(self.loss_fn.fidelity_components) - set(range(self.model_cfg["num_fidelities"])))
        if missing:
            raise ConfigError(f"loss.kwargs.fidelity_components names fidelities {missing}; this run has "
                              f"fidelities 0..{self.model_cfg['num_fidelities'] - 1}")
        self.history: List[Dict[str, float]] = []
        self.best: List[Dict[str, Any]] = []
        self.data_wait = 0.0
        self.step_time = 0.0

    # ----------------------------------------------------------------------------------------------
    def checkpoint(self, engine, final: bool = False) -> Dict[str, Any]:
        state = {"optimizer": plain_state(self.optimizer.state_dict()),
                 "scheduler": plain_state(self.scheduler.state_dict()) if self.scheduler is not None else None,
                 "epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration),
                 "epoch_complete": engine.state.iteration % max(len(self.train_loader), 1) == 0,
                 "rng": rng_state(), "history": self.history, "best": self.best, "data": self.data_fingerprint,
                 "epoch_losses": [float(x) for x in self._epoch_losses]}
        cfg = dict(self.cfg, model_config=self.model_cfg)
        return make_checkpoint(unwrap(self.model), self.model_cfg, self.fidelities, train_config=cfg,
                               training_state=state, source={"trained_with": f"aimnet2mult {__version__}"})

    def save_last(self, engine) -> None:
        if self.rank == 0:
            save_checkpoint(self.checkpoint(engine), self.run_dir / "last.pt")

    def validate(self, engine) -> None:
        if self.val_loader is None:
            return
        metrics = evaluate(self.model, self.val_loader, self.loss_fn, self.device)
        values = metrics.compute()
        self.last_metrics = metrics
        record = {"epoch": engine.state.epoch, "iteration": engine.state.iteration, **values,
                  "lr": current_lrs(self.optimizer)[0]}
        if self._epoch_losses:
            record["train_loss"] = sum(self._epoch_losses) / len(self._epoch_losses)
        self.history.append(record)
        log.info("validation epoch %d iter %d: %s lr=%.3g", engine.state.epoch, engine.state.iteration,
                 summarize(values), record["lr"])
        self.wandb_log({f"val/{k}": v for k, v in values.items()}, engine.state.iteration)
        if self.scheduler_mode == "validation":
            from ignite.engine import Engine

            holder = Engine(lambda e, b: None)
            holder.state.metrics = values
            self.scheduler(holder)
        if self.rank == 0:
            self.keep_best(engine, values["loss"])
        low = self.cfg.get("scheduler", {}).get("terminate_on_low_lr")
        if low is not None and max(current_lrs(self.optimizer)) < float(low):
            log.info("learning rate %.3g fell below terminate_on_low_lr %.3g: stopping",
                     max(current_lrs(self.optimizer)), float(low))
            engine.terminate()

    def keep_best(self, engine, score: float) -> None:
        n_saved = int(self.cfg["checkpoint"]["n_saved"])
        if n_saved <= 0:
            return
        if len(self.best) >= n_saved and score >= max(b["loss"] for b in self.best):
            return
        path = self.run_dir / f"best_epoch{engine.state.epoch}_iter{engine.state.iteration}.pt"
        save_checkpoint(self.checkpoint(engine), path)
        self.best.append({"loss": score, "path": str(path)})
        self.best.sort(key=lambda b: b["loss"])
        for old in self.best[n_saved:]:
            Path(old["path"]).unlink(missing_ok=True)
        self.best = self.best[:n_saved]

    def wandb_log(self, values: Dict[str, float], step: int) -> None:
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def start_wandb(self) -> None:
        self._wandb = None
        wcfg = self.cfg.get("wandb") or {}
        if not wcfg.get("enabled") or self.rank != 0:
            return
        try:
            import wandb
        except ImportError:
            raise ConfigError("wandb.enabled is true but wandb is not installed "
                              "(pip install aimnet2mult[wandb])") from None
        init = dict(wcfg.get("init") or {})
        init.setdefault("mode", "offline")
        init.setdefault("dir", str(self.run_dir))
        self._wandb = wandb.init(config=self.cfg, **init)

    # ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        from ignite.engine import Engine, Events

        cfg = self.cfg
        epochs = int(cfg["trainer"]["epochs"])
        step = TrainStep(self.model, self.optimizer, self.loss_fn, self.device, cfg["trainer"].get("grad_clip"))
        trainer = Engine(step)
        self._epoch_losses: List[float] = []
        self._resumed_mid_epoch = -1
        self.last_metrics = None
        self.start_wandb()
        start_epoch = 0
        if self.resume_ckpt is not None:
            ts = self.resume_ckpt.get("training_state")
            if not ts:
                raise CheckpointError("--resume: the checkpoint holds no training state (use --load to start from "
                                      "its weights instead)")
            self.optimizer.load_state_dict(ts["optimizer"])
            if self.scheduler is not None and ts.get("scheduler") is not None:
                self.scheduler.load_state_dict(ts["scheduler"])
            set_rng_state(ts["rng"])
            self.history, self.best = list(ts.get("history", [])), list(ts.get("best", []))
            length = len(self.train_loader)
            if ts.get("epoch_complete", True):
                start_epoch = int(ts["epoch"])
                trainer.load_state_dict({"epoch": start_epoch, "max_epochs": epochs, "epoch_length": length})
                log.info("resumed after epoch %d (iteration %d)", start_epoch, start_epoch * length)
            else:
                # written mid-epoch (interrupted): continue with the epoch's next batch, the weights,
                # optimizer, scheduler and random state of that moment
                iteration = int(ts["iteration"])
                start_epoch = int(ts["epoch"]) - 1
                skip = iteration - start_epoch * length
                if not 0 < skip < length:
                    raise CheckpointError(f"--resume: the checkpoint's iteration {iteration} does not lie inside "
                                          f"its epoch {ts['epoch']} of {length} batches (was the batch size or "
                                          "batches_per_epoch changed?)")
                trainer.load_state_dict({"iteration": iteration, "max_epochs": epochs, "epoch_length": length})
                self._resumed_mid_epoch = int(ts["epoch"])
                self._epoch_losses = [float(x) for x in ts.get("epoch_losses", [])]
                log.info("resumed inside epoch %d at iteration %d (batch %d of %d)", ts["epoch"], iteration,
                         skip + 1, length)
        if self.scheduler_mode == "iteration":
            trainer.add_event_handler(Events.ITERATION_STARTED, self.scheduler)
        elif self.scheduler_mode == "epoch":
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self.scheduler)

        timer = {"t": time.perf_counter()}

        @trainer.on(Events.GET_BATCH_STARTED)
        def _batch_start(engine):
            timer["get"] = time.perf_counter()

        @trainer.on(Events.GET_BATCH_COMPLETED)
        def _batch_done(engine):
            self.data_wait += time.perf_counter() - timer["get"]

        @trainer.on(Events.EPOCH_STARTED)
        def _epoch_start(engine):
            timer["epoch"] = time.perf_counter()
            if engine.state.epoch == self._resumed_mid_epoch:
                # the checkpoint's epoch goes on: its start (losses so far, fidelity copy) happened before
                self._resumed_mid_epoch = -1
                return
            self._epoch_losses = []
            if engine.state.epoch == self.schedule["pretrain_epochs"] + 1:
                for target, source in sorted(self.schedule["init_from"].items()):
                    for line in copy_fidelity(unwrap(self.model), target, source):
                        log.info("fidelity_schedule (start of epoch %d): %s", engine.state.epoch, line)

        @trainer.on(Events.ITERATION_COMPLETED)
        def _record(engine):
            self._epoch_losses.append(engine.state.output["loss"])

        every = int(cfg["log_frequency"].get("train") or 0)
        if every > 0:
            @trainer.on(Events.ITERATION_COMPLETED(every=every))
            def _log_train(engine):
                log.info("train epoch %d iter %d: loss=%.4g", engine.state.epoch, engine.state.iteration,
                         engine.state.output["loss"])
                self.wandb_log({"train/loss": engine.state.output["loss"],
                                **{f"lr_{i}": lr for i, lr in enumerate(current_lrs(self.optimizer))}},
                               engine.state.iteration)

        val_every = cfg["log_frequency"].get("val")
        if val_every:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(every=int(val_every)), self.validate)
        else:
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self.validate)

        @trainer.on(Events.EPOCH_COMPLETED)
        def _epoch_done(engine):
            self.step_time += time.perf_counter() - timer["epoch"]
            if self.val_loader is None:
                mean = sum(self._epoch_losses) / max(len(self._epoch_losses), 1)
                self.history.append({"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                                     "train_loss": mean, "lr": current_lrs(self.optimizer)[0]})
                log.info("epoch %d: train loss %.4g", engine.state.epoch, mean)
            self.save_last(engine)

        if self.progress and self.rank == 0:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": out["loss"]})

        data = EpochData(self.train_loader, start_epoch,
                         trainer.state.iteration - start_epoch * len(self.train_loader))
        # SIGINT (Ctrl-C) and SIGTERM (what Slurm and kill send at a time limit) both stop after the
        # current iteration and write last.pt
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in handled}
        interrupted: Dict[str, Any] = {"signal": None}

        def _on_signal(signum, frame):
            if interrupted["signal"] is None:
                log.warning("%s: stopping after the current iteration and saving the last checkpoint",
                            signal.Signals(signum).name)
            interrupted["signal"] = signum

        # the stop happens between iterations; after an epoch's last batch only once the epoch's
        # handlers (validation, history, last.pt) have run, so a checkpoint is mid-epoch or complete
        @trainer.on(Events.ITERATION_COMPLETED)
        def _stop_inside_epoch(engine):
            if interrupted["signal"] is not None and engine.state.iteration % len(self.train_loader):
                engine.terminate()

        @trainer.on(Events.EPOCH_COMPLETED)
        def _stop_after_epoch(engine):
            if interrupted["signal"] is not None:
                engine.terminate()

        if self.rank == 0:
            for s in handled:
                signal.signal(s, _on_signal)
        log.info("training: %d epochs of %d batches, from iteration %d", epochs, len(self.train_loader),
                 trainer.state.iteration)
        try:
            if start_epoch < epochs:
                trainer.run(data, max_epochs=epochs, epoch_length=len(self.train_loader))
            done = trainer.state.iteration >= epochs * len(self.train_loader)
            if interrupted["signal"] is not None and not done:
                self.save_last(trainer)
                log.warning("interrupted: last checkpoint %s", self.run_dir / "last.pt")
                raise TrainingInterrupted(int(interrupted["signal"]))
            # a signal while the final model is written waits for it: the run has finished
            return self.finish(trainer)
        finally:
            if self.rank == 0:
                for s in handled:
                    signal.signal(s, previous[s])

    def finish(self, trainer) -> Path:
        if self.rank == 0:
            ckpt = self.checkpoint(trainer, final=True)
            save_checkpoint(ckpt, self.save_path)
            cfg_text = dump_config(dict(self.cfg, model_config=self.model_cfg))
            atomic_write_text(self.save_path.with_name(f"{self.save_path.stem}_config.yaml"), cfg_text)
            atomic_write_text(self.run_dir / "history.json", json.dumps(self.history, indent=1))
            from .plots import learning_curves, parity_plots

            if self.history:
                learning_curves(self.history, self.run_dir / "learning_curves.png")
            if self.val_loader is not None:
                metrics = self.last_metrics or evaluate(self.model, self.val_loader, self.loss_fn, self.device)
                names = {f["index"]: f["name"] for f in self.fidelities}
                parity_plots(metrics.parity_data(), names, self.run_dir)
            total = self.step_time or 1e-9
            log.info("data loading waited %.1f%% of the training time", 100.0 * self.data_wait / total)
            log.info("saved %s (run directory %s)", self.save_path, self.run_dir)
        if self._wandb is not None:
            self._wandb.finish()
        if self.world > 1:
            self.check_ranks_agree()
        return self.save_path

    def check_ranks_agree(self) -> None:
        """After DDP training every rank must hold the same weights: compare with rank 0."""
        import torch.distributed as dist

        flat = torch.cat([p.detach().flatten().double() for p in unwrap(self.model).parameters()]).cpu()
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = torch.tensor([float((flat - ref).abs().max())])
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        if float(diff) == 0.0:
            log.info("after training the %d ranks hold identical weights", self.world)
        else:
            log.error("ranks disagree after training: max weight difference %.3g", float(diff))
        dist.barrier()
        dist.destroy_process_group()


def run_training(cfg: Dict[str, Any], save: str, model_yaml: Optional[str] = None, load: Optional[str] = None,
                 resume: Optional[str] = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Train; the run directory is locked for the whole run (see :mod:`.rundir`); ``overwrite``
    replaces a previous run into the same ``save``."""
    from .rundir import RunDirectory, describe_cleanup

    save_path = Path(save).resolve()
    run_dir = save_path.parent / f"{save_path.stem}_run"
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 owns the run directory
        return Trainer(cfg, save, model_yaml, load, resume, progress).run()
    with RunDirectory(save_path, run_dir, resuming=resume is not None, overwrite=overwrite) as rd:
        trainer = Trainer(cfg, save, model_yaml, load, resume, progress)
        describe_cleanup(rd)
        return trainer.run()
