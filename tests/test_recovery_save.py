"""SliceRecoveryTransformer.save: refuses to replace a checkpoint unless overwrite=True; writes atomically."""
from __future__ import annotations

import json

import pytest
import torch

from ebsd.errors import EBSDError, EBSDFileExistsError
from ebsd.recovery import load_model

from _recovery_helpers import tiny_model


def _weights(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_refuses_to_replace_an_existing_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    assert not _same_weights(_weights(first), _weights(second))
    assert first.save(ck, extra={"inference": {"tile": 16}}) == ck
    before = {n: (ck / n).read_bytes() for n in ("model.safetensors", "config.json")}

    with pytest.raises(EBSDFileExistsError, match=r"model\.safetensors.*overwrite=True") as info:
        second.save(ck, extra={"inference": {"tile": 32}})
    # the named error is part of the hierarchy and still an ordinary FileExistsError
    assert isinstance(info.value, EBSDError) and isinstance(info.value, FileExistsError)
    # nothing was touched, and no temporary files were left behind
    assert {n: (ck / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in ck.iterdir()) == ["config.json", "model.safetensors"]
    assert _same_weights(_weights(load_model(ck)), _weights(first))


def test_save_refuses_when_only_the_config_exists(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text('{"keep": true}')
    with pytest.raises(EBSDFileExistsError, match=r"config\.json.*overwrite=True"):
        tiny_model().save(ck)
    # refused before writing anything: no weights next to someone else's config
    assert sorted(p.name for p in ck.iterdir()) == ["config.json"]
    assert json.loads((ck / "config.json").read_text()) == {"keep": True}


def test_save_overwrite_true_replaces_both_files(tmp_path):
    ck = tmp_path / "ck"
    tiny_model(seed=0).save(ck, extra={"inference": {"tile": 16}})
    second = tiny_model(seed=1)
    second.save(ck, extra={"inference": {"tile": 32}}, overwrite=True)
    back = load_model(ck)
    assert _same_weights(_weights(back), _weights(second))
    assert back.inference_settings == {"tile": 32}
    assert sorted(p.name for p in ck.iterdir()) == ["config.json", "model.safetensors"]


def test_save_into_a_new_folder_creates_it(tmp_path):
    ck = tmp_path / "a" / "b"
    tiny_model().save(ck)  # no overwrite needed for a fresh folder (the training script's case)
    assert (ck / "model.safetensors").is_file() and (ck / "config.json").is_file()
    assert ck.parent.is_dir()


def test_save_to_a_file_path_is_refused(tmp_path):
    f = tmp_path / "not_a_folder"
    f.write_text("x")
    with pytest.raises(EBSDFileExistsError, match="not a folder"):
        tiny_model().save(f)
    assert f.read_text() == "x"


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    old = tiny_model(seed=0)
    old.save(ck)
    before = (ck / "model.safetensors").read_bytes()

    import safetensors.torch

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        tiny_model(seed=1).save(ck, overwrite=True)
    # the write went to a temporary sibling: the old weights are intact and the temporary file is gone
    assert (ck / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in ck.iterdir()) == ["config.json", "model.safetensors"]
    assert _same_weights(_weights(load_model(ck)), _weights(old))
