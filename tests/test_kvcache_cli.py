"""``llmeff kvcache train-less`` end to end on a tiny saved model, then LESS.load + generate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from llmeff import cli  # noqa: E402
from llmeff import kvcache  # noqa: E402
from llmeff.kvcache import LESS  # noqa: E402

from test_kvcache_policies import V, batch, tiny  # noqa: E402


@pytest.mark.parametrize("policy", ["streaming", "h2o"])
def test_train_less_cli_then_generate(tmp_path, policy):
    m = tiny()
    m.save_pretrained(tmp_path / "lm")
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, V, 4000))
    rc = cli.main(["kvcache", "train-less", "--lm", str(tmp_path / "lm"), "--out", str(tmp_path / "less"),
                   "--tokens", str(tmp_path / "tokens.npy"), "--policy", policy, "--budget", "16", "--seq", "40",
                   "--batch", "2", "--steps", "3", "--device", "cpu"])
    assert rc == 0
    less = LESS.load(tmp_path / "less")
    assert less.base.name == policy and less.budget == 16 and sorted(less.maps) == [0, 1]
    assert less.info["steps"] == 3
    ids, am = batch(T=40)
    with torch.no_grad(), kvcache.apply(m, less):
        out = m.generate(input_ids=ids, attention_mask=am, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 45)
