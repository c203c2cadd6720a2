"""Verifiable tasks for the Bridge benchmark: generated on the fly, checked exactly, with a character tokenizer.

Problem kinds (the benchmark mixes ``add`` and ``psum`` half and half: :data:`DEFAULT_KINDS`):

* ``add``: ``"417+385="`` -> ``"802"``: three-digit addition, **one** correct answer (810,000 problems: a
  model cannot memorise them, so held-out accuracy measures the learned procedure).
* ``mul``: ``"37*48="`` -> ``"1776"``: two-digit multiplication, one correct answer (8,100 problems).
* ``psum``: ``"P62="`` -> ``"19+43"``: write an even number ``S`` (10 ... 500) as a sum of two primes
  (Goldbach): **several** correct answers (``62 = 3+59 = 19+43 = 31+31``); either order is accepted; two
  answers are the same when they are the same unordered pair.

A problem is held out (never trained on) when ``crc32(prompt)`` falls in a fixed bucket: 1 in 8 ``add`` and
``mul`` problems, 1 in 4 ``psum`` problems. :func:`sample_problems` draws from the training side,
:func:`heldout_problems` draws the held-out side deterministically.

Set-level metrics (:func:`set_metrics`) over sets of ``N`` responses per problem: mean accuracy, consistency,
pass@N, majority-vote accuracy, coverage of distinct correct answers.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+*=P"
VOCAB = 3 + len(CHARS)
MAX_ANSWER = 8                    # "499+499" + EOS
PSUM_RANGE = (10, 500)            # even targets, inclusive
DEFAULT_KINDS = ("add", "psum")


class CharTokenizer:
    """Characters of :data:`CHARS` -> ids ``3 ...``; ``0`` PAD, ``1`` BOS, ``2`` EOS (vocabulary 17)."""

    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS
    vocab_size = VOCAB

    def __init__(self):
        self.stoi = {c: i + 3 for i, c in enumerate(CHARS)}
        self.itos = {i: c for c, i in self.stoi.items()}

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as exc:
            from ..errors import LLMEffValueError

            raise LLMEffValueError(f"character {exc.args[0]!r} is not in the task alphabet {CHARS!r}") from None
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids) -> str:
        """Text of ``ids`` up to the first EOS (PAD and BOS skipped)."""
        out = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            if i == EOS:
                break
            if i in self.itos:
                out.append(self.itos[i])
        return "".join(out)

    def batch_prompts(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(P, L)`` ids (BOS + prompt) and mask."""
        enc = [self.encode(p, bos=True) for p in prompts]
        L = max(len(e) for e in enc)
        ids = torch.full((len(enc), L), PAD, dtype=torch.long)
        mask = torch.zeros((len(enc), L), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, L - len(e):] = torch.tensor(e)
            mask[r, L - len(e):] = 1
        return ids.to(device), mask.to(device)


def _primes(limit: int) -> np.ndarray:
    s = np.ones(limit + 1, dtype=bool)
    s[:2] = False
    for i in range(2, int(limit ** 0.5) + 1):
        if s[i]:
            s[i * i::i] = False
    return s


_IS_PRIME = _primes(PSUM_RANGE[1])


def is_prime(x: int) -> bool:
    return 0 <= x < len(_IS_PRIME) and bool(_IS_PRIME[x])


@dataclass(frozen=True)
class Problem:
    """One problem: ``kind`` (``"mul"`` / ``"psum"``), ``prompt`` text, its numbers ``args``."""

    kind: str
    prompt: str
    args: tuple[int, ...]

    def answers(self) -> list[str]:
        """Every correct answer in canonical form (``psum``: ``"p+q"`` with ``p <= q``)."""
        if self.kind in ("mul", "add"):
            return [str(self._value())]
        S = self.args[0]
        return [f"{p}+{S - p}" for p in range(2, S // 2 + 1) if is_prime(p) and is_prime(S - p)]

    def canonical(self, text: str) -> str | None:
        """The canonical form of ``text`` if it is a correct answer, else ``None``."""
        if self.kind in ("mul", "add"):
            return text if text.isdigit() and len(text) <= 5 and text == str(self._value()) else None
        parts = text.split("+")
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 and p == str(int(p)) for p in parts):
            return None
        a, b = sorted(int(p) for p in parts)
        if a + b == self.args[0] and is_prime(a) and is_prime(b):
            return f"{a}+{b}"
        return None

    def _value(self) -> int:
        a, b = self.args
        return a * b if self.kind == "mul" else a + b

    def reward(self, text: str) -> float:
        """1.0 for a correct answer, else 0.0 (the verifiable reward)."""
        return 1.0 if self.canonical(text) is not None else 0.0


def make_problem(kind: str, *args: int) -> Problem:
    if kind == "mul":
        return Problem("mul", f"{args[0]}*{args[1]}=", (int(args[0]), int(args[1])))
    if kind == "add":
        return Problem("add", f"{args[0]}+{args[1]}=", (int(args[0]), int(args[1])))
    if kind == "psum":
        return Problem("psum", f"P{args[0]}=", (int(args[0]),))
    from ..errors import LLMEffValueError

    raise LLMEffValueError(f"unknown problem kind {kind!r} (add, mul, psum)")


def is_heldout(p: Problem) -> bool:
    h = zlib.crc32(p.prompt.encode())
    return h % 4 == 1 if p.kind == "psum" else h % 8 == 3


def _draw(kind: str, rng: np.random.Generator) -> Problem:
    if kind == "add":
        return make_problem("add", int(rng.integers(100, 1000)), int(rng.integers(100, 1000)))
    if kind == "mul":
        return make_problem("mul", int(rng.integers(10, 100)), int(rng.integers(10, 100)))
    if kind == "psum":
        return make_problem("psum", 2 * int(rng.integers(PSUM_RANGE[0] // 2, PSUM_RANGE[1] // 2 + 1)))
    from ..errors import LLMEffValueError

    raise LLMEffValueError(f"unknown problem kind {kind!r} (add, mul, psum)")


def sample_problems(n: int, rng: np.random.Generator, kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[Problem]:
    """``n`` training-side problems (held-out ones are redrawn), each kind equally likely."""
    out = []
    for k in rng.integers(0, len(kinds), size=n):
        p = _draw(kinds[int(k)], rng)
        while is_heldout(p):
            p = _draw(kinds[int(k)], rng)
        out.append(p)
    return out


def heldout_problems(n_single: int = 512, n_psum: int | None = None, seed: int = 1234,
                     kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[Problem]:
    """Held-out problems: for each single-answer kind of ``kinds`` (``add``, ``mul``), ``n_single`` distinct
    ones drawn with a fixed seed; then the first ``n_psum`` (default: all 62) held-out ``psum`` problems."""
    rng = np.random.default_rng(seed)
    out: list[Problem] = []
    for kind in kinds:
        if kind == "psum":
            continue
        seen: set[str] = set()
        while len(seen) < n_single:
            p = _draw(kind, rng)
            if is_heldout(p) and p.prompt not in seen:
                seen.add(p.prompt)
                out.append(p)
    if "psum" in kinds:
        ps = [p for p in (make_problem("psum", s) for s in range(PSUM_RANGE[0], PSUM_RANGE[1] + 1, 2))
              if is_heldout(p)]
        out += ps if n_psum is None else ps[:n_psum]
    return out


def sft_example(p: Problem, rng: np.random.Generator) -> str:
    """A demonstration answer: the result; for ``psum`` a uniformly chosen correct pair (``p <= q``)."""
    ans = p.answers()
    return ans[int(rng.integers(len(ans)))]


def sft_batch(tok: CharTokenizer, problems: list[Problem], rng: np.random.Generator, device=None):
    """``(ids, mask, loss_mask)`` ``(B, T)`` for teacher forcing: BOS + prompt + answer + EOS, left-padded;
    ``loss_mask`` marks the answer and EOS tokens (the targets)."""
    seqs, nprompt = [], []
    for p in problems:
        pr = tok.encode(p.prompt, bos=True)
        seqs.append(pr + tok.encode(sft_example(p, rng), eos=True))
        nprompt.append(len(pr))
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    lmask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for r, (s, npr) in enumerate(zip(seqs, nprompt)):
        off = T - len(s)
        ids[r, off:] = torch.tensor(s)
        mask[r, off:] = 1
        lmask[r, off + npr:] = True
    return ids.to(device), mask.to(device), lmask.to(device)


# -- set-level metrics -----------------------------------------------------------------------------------------
def set_metrics(problems: list[Problem], texts: list[list[str]]) -> dict:
    """Metrics of sets of responses: ``texts[i]`` holds the ``N`` decoded responses to ``problems[i]``.

    Returns (all in [0, 1], means over problems):
        ``accuracy``: share of correct responses;
        ``consistency``: over problems with at least one correct response, the share of correct responses in
        the set (how reliably a set that can solve the problem does);
        ``pass_at_n``: at least one correct response;
        ``majority``: the most frequent response (ties: the one seen first) is correct;
        ``coverage``: ``psum`` problems only: distinct correct answers / ``min(N, number of correct answers)``;
        ``distinct_correct``: ``psum`` only: mean number of distinct correct answers per set;
        and the same ``accuracy`` per kind (``accuracy_mul``, ``accuracy_psum``).
    """
    acc, cons, pas, maj, cov, dist = [], [], [], [], [], []
    per_kind: dict[str, list[float]] = {}
    for p, ts in zip(problems, texts):
        canon = [p.canonical(t) for t in ts]
        ok = [c is not None for c in canon]
        a = sum(ok) / len(ok)
        acc.append(a)
        per_kind.setdefault(p.kind, []).append(a)
        pas.append(float(any(ok)))
        if any(ok):
            cons.append(a)
        keys = [c if c is not None else "\x00" + t for c, t in zip(canon, ts)]
        counts: dict[str, int] = {}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        best = max(counts.values())
        top = next(k for k in keys if counts[k] == best)
        maj.append(float(not top.startswith("\x00")))
        if p.kind == "psum":
            d = len({c for c in canon if c is not None})
            dist.append(float(d))
            cov.append(d / min(len(ts), len(p.answers())))
    m = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    out = {"accuracy": m(acc), "consistency": m(cons), "pass_at_n": m(pas), "majority": m(maj),
           "coverage": m(cov), "distinct_correct": m(dist), "problems": len(problems)}
    for k, v in per_kind.items():
        out[f"accuracy_{k}"] = m(v)
    return out
