"""Data parallelism among learner processes: one torch.distributed group (gloo on CPU, NCCL on GPU).

Every learner holds the whole batch (rollouts are small); each computes experience for its block
of rows and all-gathers it, and trains on its share of every micro-batch. Its loss is scaled by its
share of the micro-batch's response tokens, so the SUM of the shard gradients is exactly the
gradient of the whole micro-batch's token-mean loss: N learners take the step one learner would.
With world size 1 every method is the identity, so the single learner runs the same code."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# A collective waits this long for a peer: long enough for one slow PPO phase, short enough that a
# learner stuck behind a failed peer gives up instead of hanging the run for gloo's default 30 min.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world: int = 1

    def block(self, n: int) -> torch.Tensor:
        """This rank's contiguous block of rows 0..n-1 (for experience, then all-gathered)."""
        return torch.arange(n).tensor_split(self.world)[self.rank]

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's share of a micro-batch's row indices."""
        return rows.tensor_split(self.world)[self.rank]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's block along dim 0 (blocks have equal shapes by config validation)."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def combine(self, t: torch.Tensor) -> torch.Tensor:
        """Rows each rank filled (zeros elsewhere; every row filled by exactly one rank) -> all rows
        on every rank. A sum of one value and zeros is exact, so every rank gets the same bits."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """All-reduce (sum) the gradients of `params` in one flat buffer; every rank gets the same bits."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p).clone()

    def sum_stats(self, totals: dict[str, float], device: str) -> dict[str, float]:
        """Sum token-weighted statistics over ranks: the whole batch's values."""
        if self.world == 1:
            return totals
        keys = sorted(totals)
        buf = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(buf)
        return dict(zip(keys, buf.tolist()))

    def broadcast(self, params: list[torch.Tensor]) -> None:
        """Start every rank from rank 0's weights (same seed gives the same init; this makes it certain)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A TCP port free now, below the OS's ephemeral range where Linux says where that is. A port
    the OS hands out (bind to 0) is released before its user binds it again, and meanwhile any
    process's next outgoing connection may take it: a Ray head's agent then failed to start (seen
    in the test suite). Below the range, only a process that asks for that very port can."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    draw = random.Random()  # its own stream: the run's seeded generators are not touched
    candidates = [draw.randrange(max(1024, low - 12000), low) for _ in range(32)] if low > 2048 else []
    for port in [*candidates, 0]:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port")


def init_method(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def join(host: str, port: int, rank: int, world: int, device: str) -> DataParallel:
    """Join the learners' process group (blocks until all `world` ranks have joined)."""
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=init_method(host, port), rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
    )
    return DataParallel(rank, world)


def token_share(mask: torch.Tensor, rows: torch.Tensor, shard: torch.Tensor) -> float:
    """Fraction of the micro-batch's response tokens (mask: (B, R)) that lie in this rank's shard."""
    total = mask[rows].sum()
    return 1.0 if len(shard) == len(rows) else float(mask[shard].sum() / total.clamp(min=1))
