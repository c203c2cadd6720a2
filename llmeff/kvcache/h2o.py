"""H2O, "Heavy-Hitter Oracle" (Zhang et al., 2023): keep the tokens with the largest accumulated attention
("heavy hitters") plus a recent window."""
from __future__ import annotations

import torch

from ..errors import LLMEffValueError
from .base import EvictionPolicy


class H2O(EvictionPolicy):
    """Keep the ``recent`` newest tokens plus the ``budget - recent`` tokens of largest accumulated attention.

    The accumulated attention of a cached token is the sum, over every query that has seen it so far (the
    prompt's queries at prefill, then each generated token) and over the query heads of its key-value group,
    of its softmax attention probability.
    """

    name = "h2o"
    needs_scores = True

    def __init__(self, budget: int = 256, recent: int | None = None):
        super().__init__(budget)
        self.recent = self.budget // 2 if recent is None else int(recent)
        if not 1 <= self.recent <= self.budget:
            raise LLMEffValueError(f"H2O needs 1 <= recent <= budget, got recent={self.recent}, budget={self.budget}")

    def priority(self, pos, scores, seen):
        recent = pos >= seen - self.recent
        return torch.where(recent, torch.full_like(scores, float("inf")), scores)

    def describe(self) -> dict:
        return {"policy": self.name, "budget": self.budget, "recent": self.recent}
