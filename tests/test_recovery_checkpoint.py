"""Checkpoints: the training script's output loads offline and reproduces its training-time output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ebsd.recovery import DEFAULT_CHECKPOINT, load_model


def check_reproduces_reference(ckpt: Path, atol: float = 1e-3) -> None:
    """``reference.safetensors`` (written at the end of training) is reproduced by the saved weights."""
    from safetensors.torch import load_file

    ref = load_file(str(ckpt / "reference.safetensors"))
    net = load_model(ckpt)
    with torch.no_grad():
        out = net(ref["input"], ref["mask"].bool())
    assert out.shape == ref["output"].shape
    assert (out - ref["output"]).abs().max() < atol


@pytest.mark.slow
def test_smoke_training_writes_a_reproducible_checkpoint(tmp_path):
    from ebsd.train_recovery import main

    out = tmp_path / "ck"
    assert main(["--out", str(out), "--smoke", "--minutes", "0.6", "--seed", "3"]) == 0
    for name in ("model.safetensors", "config.json", "loss_curve.json", "loss_curve.png", "reference.safetensors"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["seed"] == 3 and "--smoke" in cfg["training"]["command"]
    assert cfg["training"]["steps"] > 0 and cfg["inference"]["context"] == 2
    tuned = cfg["training"]["projection_tuning"]["best"]
    assert {k: cfg["inference"][k] for k in tuned} == tuned
    curve = json.loads((out / "loss_curve.json").read_text())
    assert curve["val"] and all(v["mis_deg"] >= 0 for v in curve["val"])
    check_reproduces_reference(out)


def test_bundled_checkpoint_reproduces_training_output():
    assert (DEFAULT_CHECKPOINT / "model.safetensors").is_file(), f"the bundled checkpoint is missing from {DEFAULT_CHECKPOINT}"
    check_reproduces_reference(DEFAULT_CHECKPOINT)


@pytest.mark.parametrize("missing", [[8], [7, 8, 9]])
def test_bundled_checkpoint_beats_slerp(missing):
    assert (DEFAULT_CHECKPOINT / "model.safetensors").is_file(), f"the bundled checkpoint is missing from {DEFAULT_CHECKPOINT}"
    from ebsd.recovery import recover_missing_slices, slerp_neighbours
    from ebsd.recovery._common import misorientation_deg
    from ebsd.synthetic import synthetic_volume

    # a held-out seed (< HELD_OUT_SEED_LIMIT, never used in training)
    vol, truth = synthetic_volume((16, 64, 64), 10.0, "m-3m", 77, twins=0.3, noise_deg=1.0,
                                  unindexed_fraction=0.01, missing_slices=missing, return_truth=True)
    clean = truth.clean_quaternions[missing]
    # the shipped checkpoint, named explicitly (not "default", which $EBSDTK_RECOVERY_MODEL could redirect)
    new = recover_missing_slices(vol, missing, model=DEFAULT_CHECKPOINT, method="network", progress=False)
    assert new.metadata["recovery_method"] == "transformer+projection"
    ours = misorientation_deg(new.quaternions[missing], clean, "m-3m")
    slerp = misorientation_deg(slerp_neighbours(vol, missing).quaternions[missing], clean, "m-3m")
    assert ours.mean() < slerp.mean(), (float(ours.mean()), float(slerp.mean()))
