"""Path sampling as a pure function of (seed, stream, step).

Every random choice of the search draws from a fresh ``torch.Generator`` seeded from a hash of the run seed, a
stream name and a step counter. A resumed search therefore replays exactly, and Ray Train ranks that share
(seed, step) and α sample identical paths without communicating.
"""

from __future__ import annotations

import hashlib

import torch


def generator(seed: int, stream: str, step: int) -> torch.Generator:
    """A CPU generator whose state depends only on its arguments."""
    digest = hashlib.sha256(f"{seed}/{stream}/{step}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def sample_path(probs: torch.Tensor, gen: torch.Generator) -> list[int]:
    """One candidate per block drawn from its row of ``probs`` (blocks × candidates, zeros where disallowed)."""
    p = probs.detach().to("cpu", torch.float64)
    return torch.multinomial(p, 1, generator=gen).squeeze(1).tolist()


def sample_pairs(probs: torch.Tensor, gen: torch.Generator) -> list[tuple[int, ...]]:
    """The two-path sample of every block, active candidate first.

    Two distinct candidates are drawn from the block's probabilities without replacement; then the active one is
    drawn between them with their renormalised probabilities (the binary gate is 1 on it, 0 on the other). A block
    with a single allowed candidate gets a one-element tuple.
    """
    p = probs.detach().to("cpu", torch.float64)
    out: list[tuple[int, ...]] = []
    for row in p:
        if int((row > 0).sum()) < 2:
            out.append((int(row.argmax()),))
            continue
        i, j = torch.multinomial(row, 2, replacement=False, generator=gen).tolist()
        u = float(torch.rand((), generator=gen, dtype=torch.float64, device="cpu"))
        out.append((i, j) if u * (row[i] + row[j]) < row[i] else (j, i))
    return out


def batch_indices(n: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` distinct indices of ``n`` items (all of them, shuffled, if ``n`` is smaller)."""
    return torch.randperm(n, generator=gen, device="cpu")[: min(batch, n)]
