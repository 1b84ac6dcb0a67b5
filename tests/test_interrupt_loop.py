"""Kill a short training at random moments (SIGINT, SIGTERM, kill -9), resume each time: only
loadable checkpoints, no orphan temporaries after the next start, and the final weights equal the
uninterrupted run's bit for bit (CPU, ``deterministic: true``, one thread)."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import synthetic
import torch
import yaml
from test_train import SMALL_MODEL, small_train_yaml

from aimnet2mult.checkpoint import build_model, load_checkpoint

MARKER = "training: "
OVERRIDES = ["data.fidelity_datasets.0=a.h5", "data.fidelity_datasets.1=b.h5", "deterministic=true",
             "data.val_fraction=0.25", "data.samplers.train.kwargs.batch_size=4", "--no-progress",
             # the copy of fidelity 1 into fidelity 0 at the start of epoch 3 must happen once
             "fidelity_schedule.pretrain_epochs=2", "fidelity_schedule.init_from.0=1"]


def _start(tmp_path, save, extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "aimnet2mult.train.cli", "--config", "train.yaml", "--model",
                             "model.yaml", "--save", save, *OVERRIDES, *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_marker(log, offset, proc, timeout=300):
    """Seconds waited until the run logs that training starts (after start-up cleanup)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and MARKER in log.read_text()[offset:]:
            return time.time()
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before it started: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("training did not start in time")


def test_kill_loop_resumes_to_the_uninterrupted_weights(tmp_path):
    synthetic.write_h5(tmp_path / "a.h5", synthetic.make_samples(48, seed=21))
    synthetic.write_h5(tmp_path / "b.h5", synthetic.make_samples(48, seed=22, scale=1.2), labels=())
    small_train_yaml(tmp_path / "train.yaml", epochs=10)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(SMALL_MODEL))

    proc = _start(tmp_path, "full.pt", [])
    t_start = _wait_for_marker(tmp_path / "full_run" / "train.log", 0, proc)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    train_time = time.time() - t_start
    full = load_checkpoint(tmp_path / "full.pt")

    run_dir, log = tmp_path / "m_run", tmp_path / "m_run" / "train.log"
    rng = random.Random(11)
    plan = [signal.SIGINT, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGTERM] * 2
    expected_rc = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
    interrupted, leftovers = [], set()
    for signum in plan:
        last = run_dir / "last.pt"
        extra = ["--resume", str(last)] if last.exists() else ["--overwrite"]
        offset = len(log.read_text()) if log.exists() else 0
        proc = _start(tmp_path, "m.pt", extra)
        _wait_for_marker(log, offset, proc)
        # what an earlier kill -9 left half-written is gone once the next run has started
        assert not any((run_dir / name).exists() for name in leftovers), leftovers
        time.sleep(rng.uniform(0.02, 0.08) * train_time)  # >= 5 stops fit even on a loaded machine
        if proc.poll() is not None:
            break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0 or (tmp_path / "m.pt").exists():
            break  # the signal came as the run finished
        assert proc.returncode == expected_rc[signum], err
        interrupted.append(signal.Signals(signum).name)
        leftovers = {p.name for p in run_dir.glob(".*.tmp")}
        for path in run_dir.glob("*.pt"):
            build_model(load_checkpoint(path))
    assert len(interrupted) >= 5, f"only {interrupted} interrupted: the training was too short for the plan"
    text = log.read_text()
    assert "resumed inside epoch" in text, "no mid-epoch checkpoint was resumed"
    # the copy at the start of epoch 3 runs in a resumed run only if it resumed before that point
    for segment in text.split(" INFO resumed ")[1:]:
        where, epoch = re.match(r"(inside|after) epoch (\d+)", segment).groups()
        before_copy = int(epoch) < 3 if where == "inside" else int(epoch) <= 2
        copied = "element embeddings copied from fidelity 1" in segment
        assert not copied or before_copy, f"copied again after the copy point: {segment[:200]}"
        # a run stopped before it reached the start of epoch 3 had no chance to copy
        reached_copy_point = re.search(r"validation epoch ([3-9]|\d\d) ", segment) is not None
        if before_copy and reached_copy_point:
            assert copied, f"resumed before the copy point and passed it without copying: {segment[:200]}"

    if proc.returncode != 0:
        # the last run was stopped (a kill -9 may have come while it wrote its plots after m.pt):
        # start once more, which cleans what it left and finishes the run
        proc = _start(tmp_path, "m.pt", ["--resume", str(run_dir / "last.pt")])
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    assert not list(run_dir.glob(".*.tmp"))
    resumed = load_checkpoint(tmp_path / "m.pt")
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert [h["loss"] for h in resumed["training_state"]["history"]] == \
        [h["loss"] for h in full["training_state"]["history"]]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
