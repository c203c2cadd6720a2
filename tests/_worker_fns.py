"""Worker functions for llmeff.workers tests, in a light module (spawned children import it by name)."""
from __future__ import annotations

import os
import time


def blocked_peer(rank, port):
    """Rank 1 fails after joining the group; rank 0 waits in a collective that will never complete."""
    import datetime

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=600))
    if rank == 1:
        raise ValueError("rank one is broken")
    dist.all_reduce(torch.ones(3))
    return "unreachable"


def exits_silently(rank):
    """Rank 1 dies without a word (as when the OOM killer strikes); rank 0 would sleep for 10 minutes."""
    if rank == 1:
        os._exit(3)
    time.sleep(600)
