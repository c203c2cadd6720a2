"""Load a Hugging Face causal LM and its tokenizer from a local folder, never from the network.

Every ``--lm`` option of the ``llmeff`` command line goes through here. A model is a folder written by
``save_pretrained`` (``config.json`` + weights, and the tokenizer files), e.g. by ``llmeff train_lm``.
Loading uses ``local_files_only=True``: a Hub repository id such as ``gpt2`` is *not* looked up and nothing is
downloaded; a missing or incomplete folder raises :class:`~llmeff.errors.LLMEffFileNotFoundError` naming the
folder and what to do.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import LLMEffFileNotFoundError

#: help text shared by every ``--lm`` option
LM_HELP = ("local model folder (save_pretrained format: config.json, weights, tokenizer; e.g. from "
           "`llmeff train_lm`); read with local_files_only=True: nothing is ever downloaded, a Hub name is not "
           "looked up")


def model_dir(path: str | os.PathLike, what: str = "model") -> Path:
    """``path`` as a :class:`~pathlib.Path` after checking that it is a local model folder.

    Raises:
        LLMEffFileNotFoundError: ``path`` does not exist, is not a folder, or has no ``config.json``.
    """
    p = Path(path).expanduser()
    hint = ("models are read only from a local folder written by save_pretrained (e.g. `llmeff train_lm "
            "--out DIR`), never downloaded")
    if not p.exists():
        extra = ""
        if "/" in str(path) and not str(path).startswith((".", "/", "~")) and str(path).count("/") == 1:
            extra = f" ({str(path)!r} looks like a Hub name: download it yourself and pass the folder)"
        raise LLMEffFileNotFoundError(f"{what} folder {str(path)!r} does not exist{extra}; {hint}")
    if not p.is_dir():
        raise LLMEffFileNotFoundError(f"{what} path {str(path)!r} is not a folder; {hint}")
    if not (p / "config.json").is_file():
        raise LLMEffFileNotFoundError(f"{what} folder {str(path)!r} has no config.json, so it is not a saved model; {hint}")
    return p


def load_config(path: str | os.PathLike):
    """The ``transformers`` config of the model folder ``path`` (local files only)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir(path)), local_files_only=True)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in the model folder ``path`` (local files only).

    Raises:
        LLMEffFileNotFoundError: no tokenizer files in the folder.
    """
    from transformers import AutoTokenizer

    p = model_dir(path)
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LLMEffFileNotFoundError(
            f"model folder {str(path)!r} has no usable tokenizer ({type(exc).__name__}: {exc}); save the "
            "tokenizer next to the model (tokenizer.save_pretrained(folder))") from exc


def load_model(path: str | os.PathLike, device=None, dtype=None):
    """``AutoModelForCausalLM`` from the model folder ``path`` (local files only), on ``device``, in ``eval``
    mode. ``dtype`` default: bfloat16 on CUDA, float32 otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    p = model_dir(path)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, local_files_only=True)
    except OSError as exc:
        raise LLMEffFileNotFoundError(f"cannot read the model in {str(path)!r}: {exc}") from exc
    return model.to(dev).eval()
