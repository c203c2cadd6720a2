"""llmeff.lm: offline corpus, held-out split, and the small-LM training script end to end (tiny)."""
from __future__ import annotations

import json

import pytest

from llmeff.lm.corpus import build_corpus, is_heldout, troff_to_text


def test_troff_to_text():
    src = ('.\\" comment\n.TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH SYNOPSIS\n.B ls\n'
           '[\\fI\\,OPTION\\/\\fR]...\n.PP\n\\fB\\-a\\fR, \\fB\\-\\-all\\fR\n')
    text = troff_to_text(src)
    assert "comment" not in text and ".TH" not in text
    assert "ls - list directory contents" in text
    assert "[OPTION]..." in text and "-a, --all" in text


def test_heldout_split_is_deterministic_and_about_the_fraction():
    keys = [f"stdlib:pkg/mod{i}.py" for i in range(5000)]
    held = [k for k in keys if is_heldout(k, 0.03)]
    assert held == [k for k in keys if is_heldout(k, 0.03)]
    assert 0.02 < len(held) / len(keys) < 0.04
    assert not any(is_heldout(k, 0.0) for k in keys)


def test_build_corpus_small(tmp_path):
    lib = tmp_path / "lib"
    (lib / "site-packages" / "x").mkdir(parents=True)
    (lib / "site-packages" / "x" / "skip.py").write_text("x = 1\n" * 100)
    for i in range(40):
        (lib / f"m{i}.py").write_text(f'"""Module {i}."""\n' + "def f():\n    return 1\n" * 10)
    c = build_corpus(lib, None, heldout_frac=0.2, site=None, log=lambda m: None)
    assert c.stats["stdlib"]["files"] == 40
    assert len(c.heldout) == c.stats["stdlib"]["heldout_files"] > 0
    assert all("x = 1" not in t for t in c.train + c.heldout)


@pytest.mark.slow
def test_train_small_lm_smoke(tmp_path):
    pytest.importorskip("transformers")
    from llmeff.lm.train_small_lm import heldout_tokens, main

    out = tmp_path / "lm"
    assert main(["--out", str(out), "--smoke", "--minutes", "0.25", "--max-site-mb", "0"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "tokenizer.json" in names and len(names) <= 8
    rec = json.loads((out / "config.json").read_text())["llmeff_train"]
    assert rec["steps"] >= 1 and rec["tokens_per_second"] > 0
    assert len(heldout_tokens(out)) == rec["heldout_tokens"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(["def f(x):"], return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
