"""Shared pieces of the low-rank toy experiments: the target matrix and how a curve is measured.

A helper module (its name starts with "_"), not an experiment. The experiments that import it
(scurves, weight_decay, optimizers, cross_entropy, bumps) rerun when it changes; copy it beside
them to run one by hand (`python experiments/bumps.py` finds it). Needs only torch.
"""

import math

import torch


def make_target(n, rank, gen, device):
    """C = U V^T with U, V ~ N(0, 1), and its singular vectors (largest first)."""
    U = torch.randn(n, rank, generator=gen).to(device)
    V = torch.randn(n, rank, generator=gen).to(device)
    C = U @ V.T
    u, sigma, vh = torch.linalg.svd(C, full_matrices=False)
    return C, u[:, :rank], sigma[:rank], vh[:rank].T


def crossing(curve, level):
    """First index where a rising curve reaches `level` (len(curve) if it never does)."""
    hits = (curve >= level).nonzero()
    return int(hits[0]) if len(hits) else len(curve)


def drop_times(losses):
    """Steps where 10%, 50% and 90% of the drop from the first to the final loss is done.

    Measured relative to the final loss, not to zero (with weight decay or a stalled run the final
    loss is not zero). None for a curve that is not finite (a diverged run).
    """
    if not bool(torch.isfinite(losses).all()):
        return None
    start, final = float(losses[0]), float(losses[-1])
    drop = start - final

    def step_at(frac):
        below = (losses <= start - frac * drop).nonzero()
        return int(below[0]) if len(below) else len(losses)

    return step_at(0.1), step_at(0.5), step_at(0.9)


def drop_stats(losses):
    """Drop step, plateau length and sharpness (NaN for a diverged run, so claims count it as failing)."""
    times = drop_times(losses)
    if times is None:
        return {"drop_step": math.nan, "plateau_steps": math.nan, "sharpness": math.nan}
    t10, t50, t90 = times
    return {"drop_step": t50, "plateau_steps": t10, "sharpness": t10 / max(t90 - t10, 1)}
