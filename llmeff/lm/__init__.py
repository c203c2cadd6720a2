"""A small Llama-architecture causal LM trained from scratch on text found offline on the machine.

GRIFFIN (and the other :mod:`llmeff` methods) need a *trained* model to measure quality on: random weights
do not flock. :mod:`llmeff.lm.corpus` builds the corpus (Python standard-library sources and docstrings,
Debian/Ubuntu manual pages when present) with a deterministic held-out split;
:mod:`llmeff.lm.train_small_lm` trains the tokenizer and the model and saves both with
``save_pretrained``. Nothing here is imported by ``import llmeff``.
"""
