"""Tiny model folders on disk (save_pretrained format, with a character-level tokenizer), built offline."""
from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def char_tokenizer(eot: bool = True):
    """A character-level ``PreTrainedTokenizerFast`` (printable ASCII); with ``<|endoftext|>`` or without."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    toks = SPECIALS + (["<|endoftext|>"] if eot else []) + list(string.printable)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(toks))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS + (["<|endoftext|>"] if eot else []))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def save_lm_folder(path, heads: int = 4, kv_heads: int = 2, eot: bool = True, seed: int = 0,
                   intermediate: int = 64) -> Path:
    """A tiny random Llama + a character tokenizer saved in ``path``; returns ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer(eot)
    hd = 8
    cfg = LlamaConfig(vocab_size=128, hidden_size=heads * hd, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hd,
                      max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    assert len(tok) <= cfg.vocab_size
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None      # always generate the requested number of tokens
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
