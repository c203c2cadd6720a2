"""Tiny random causal LMs of every family :mod:`llmeff` supports, built from configs (no downloads)."""
from __future__ import annotations

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "opt")
VOCAB = 101


def tiny_lm(family: str, seed: int = 0, layers: int = 2):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    if family == "llama":
        cfg = tf.LlamaConfig(**common)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, sliding_window=None)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif family == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=8)
    elif family == "gemma":
        cfg = tf.GemmaConfig(**common, head_dim=8, hidden_act="gelu_pytorch_tanh")
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**common, head_dim=8, query_pre_attn_scalar=8, sliding_window=64)
    elif family == "phi3":
        cfg = tf.Phi3Config(**common)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=128,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
    elif family == "opt":
        cfg = tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=72, num_hidden_layers=layers,
                           num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    # random init has tiny std: widen it so activations are far from zero and top-k ties are rare
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    model.generation_config.eos_token_id = None      # always generate the requested number of tokens
    model.generation_config.pad_token_id = 0
    return model
