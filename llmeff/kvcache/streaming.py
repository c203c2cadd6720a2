"""StreamingLLM (Xiao et al., 2023): keep the first ``sink`` tokens ("attention sinks") and a recent window."""
from __future__ import annotations

import torch

from ..errors import LLMEffValueError
from .base import EvictionPolicy


class StreamingLLM(EvictionPolicy):
    """Keep ``sink`` attention-sink tokens and the ``window`` most recent tokens: ``budget = sink + window``.

    Keys keep the rotary positions they were computed at (no re-rotation inside the window).
    """

    name = "streaming"

    def __init__(self, window: int = 252, sink: int = 4):
        if int(window) < 1 or int(sink) < 0:
            raise LLMEffValueError(f"StreamingLLM needs window >= 1 and sink >= 0, got window={window}, sink={sink}")
        self.sink = int(sink)
        self.window = int(window)
        super().__init__(self.sink + self.window)

    @classmethod
    def with_budget(cls, budget: int, sink: int = 4) -> "StreamingLLM":
        return cls(window=int(budget) - sink, sink=sink)

    def priority(self, pos, scores, seen):
        p = pos.to(torch.float32)
        return torch.where(pos < self.sink, torch.full_like(p, float("inf")), p)

    def describe(self) -> dict:
        return {"policy": self.name, "budget": self.budget, "sink": self.sink, "window": self.window}
