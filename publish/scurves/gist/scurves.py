"""S-curves: learning a low-rank matrix with a factored model plateaus, then drops sharply.

Rebuilds the toy from "Multi-Component Learning and S-Curves" (Jermyn & Shlegeris, 2022):
fit a target C = U V^T with a model Z = X Y^T by full-batch gradient descent on
L = 1/2 * sum_ij (C_ij - Z_ij)^2. The single-component controls learn the same target with one
factor fixed to the target's own directions, so the loss is quadratic in what is learned.

The target and the drop measures (drop step, plateau, sharpness) are shared with the other
low-rank experiments in _lowrank.py.

    python experiments/scurves.py          # default config, seed 1; needs only torch
"""

import math

import torch

from _lowrank import drop_stats, make_target

PARAMS = {
    "n": 100,             # matrix size (n x n)
    "rank": 1,            # rank r of the target C and of the model's factors
    "model": "factored",  # "factored": Z = X Y^T; controls: "vector": Z = X V^T, "scalar": Z = U diag(a) V^T
    "init_scale": 1e-3,   # std of the model's initial entries (s)
    "lr": 1e-3,           # SGD learning rate; stable while lr * largest singular value of C < ~1
    "steps": 3000,        # full-batch gradient steps
    "device": "cpu",      # "cpu" or "cuda"
}
SWEEP = [
    {"model": ["factored", "vector", "scalar"]},              # the S-curve and its controls
    {"init_scale": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]},          # plateau length against init scale
    {"rank": [1, 2, 10, 100]},                                # one S-curve per component
]
SEEDS = 10
OUTPUTS = {
    "loss": "series: training loss L at each step (before the update)",
    "top_learned": "series: fraction of the largest target component learned, u1^T Z v1 / sigma1",
    "last_learned": "series: fraction of the smallest target component learned, ur^T Z vr / sigma_r",
    "final_loss": "scalar: loss after the last step",
    "drop_step": "scalar: first step where the loss is halfway between its start and its final value",
    "plateau_steps": "scalar: steps before 10% of the total loss drop has happened",
    "sharpness": "scalar: plateau_steps / steps from 10% to 90% of the drop (above 1: plateau then sharp drop)",
}

# What figures, tables and generated sentences call them (a label, or a label and its unit)
LABELS = {
    "init_scale": "init scale s",
    "lr": "learning rate η",
    "rank": "rank r",
    "drop_step": ("drop step", "steps"),
    "plateau_steps": ("plateau length", "steps"),
    "final_loss": "final loss",
    "loss": "training loss L",
    "top_learned": "fraction of the top component learned",
    "last_learned": "fraction of the last component learned",
    "sharpness": "sharpness",
    "model": "model",
}


def per_seed_log_fit(r):
    """For each seed: plateau grows monotonically with log(1/s) and a line fits it (R^2 > 0.95)."""
    groups = r.group_by("init_scale")
    scales = sorted(groups, reverse=True)
    x = [math.log(1 / s) for s in scales]
    plateaus = [groups[s].scalar("plateau_steps") for s in scales]
    verdicts = []
    for i in range(len(plateaus[0])):
        y = [p[i] for p in plateaus]
        monotone = all(b > a for a, b in zip(y, y[1:]))
        mx, my = sum(x) / len(x), sum(y) / len(y)
        sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
        sxx = sum((a - mx) ** 2 for a in x)
        syy = sum((b - my) ** 2 for b in y)
        r2 = sxy * sxy / (sxx * syy) if syy > 0 else 0.0
        verdicts.append(monotone and r2 > 0.95)
    return verdicts


CLAIMS = [
    {"claim": "Rank 1 with SGD: the loss sits on a plateau, then drops sharply (an S-curve).",
     "where": {"model": "factored", "rank": 1, "init_scale": 1e-3},
     "check": lambda r: r.scalar("sharpness") > 1, "metric": "sharpness"},
    {"claim": "The single-component controls show no plateau: the loss falls from step 0.",
     "where": {"model": ["vector", "scalar"]}, "per": "model",
     "check": lambda r: r.scalar("sharpness") < 0.25, "metric": "sharpness"},
    {"claim": "The plateau lengthens as the initialisation shrinks, linearly in log(1/s).",
     "where": {"model": "factored", "rank": 1}, "check": per_seed_log_fit},
    {"claim": "At rank 10, the largest component is learned before the smallest.",
     "where": {"model": "factored", "rank": 10, "init_scale": 1e-3},
     "check": lambda r: first_crossing(r.series("top_learned"), 0.5) < first_crossing(r.series("last_learned"), 0.5)},
    {"claim": "At high rank the initial plateau shrinks: rank 100 leaves it sooner than rank 1.",
     "where": {"model": "factored", "init_scale": 1e-3},
     "check": lambda r: r.where(rank=100).scalar("plateau_steps") < r.where(rank=1).scalar("plateau_steps"),
     "metric": None},
]


def first_crossing(curves, level):
    """Per row, the first index where the curve reaches `level` (len if never)."""
    out = []
    for row in curves:
        hits = [i for i, v in enumerate(row) if v >= level]
        out.append(hits[0] if hits else len(row))
    return torch.tensor(out).numpy()


def init_params(kind, n, rank, s, gen):
    """Initial values of the learned tensors, entries ~ N(0, s^2)."""
    if kind == "factored":  # Z = X Y^T
        return [s * torch.randn(n, rank, generator=gen), s * torch.randn(n, rank, generator=gen)]
    if kind == "vector":  # Z = X V^T: one factor fixed to the target's right singular vectors
        return [s * torch.randn(n, rank, generator=gen)]
    if kind == "scalar":  # Z = U diag(a) V^T: only the singular values are learned
        return [s * torch.randn(rank, generator=gen)]
    raise ValueError(f"unknown model {kind!r}: use factored, vector or scalar")


def forward_fn(kind, params, u, v):
    """Z from the parameters; works for one seed or a stack of seeds (leading batch dimension)."""
    vt = v.transpose(-1, -2)
    if kind == "factored":
        X, Y = params
        return lambda: X @ Y.transpose(-1, -2)
    if kind == "vector":
        (X,) = params
        return lambda: X @ vt
    (a,) = params
    return lambda: (u * a.unsqueeze(-2)) @ vt


# region: training-step
def train(C, params, forward, u, sigma, v, lr, steps):
    """Full-batch SGD on L = 1/2 * sum (C - Z)^2, logging the loss and the learned fraction of components.

    C may hold one seed (n x n) or a stack of seeds (S x n x n): seeds never interact, so the
    gradient of the summed loss is each seed's own gradient and SGD steps them independently.
    """
    opt = torch.optim.SGD(params, lr=lr)
    batch = C.shape[:-2]
    losses = torch.empty(steps, *batch)
    learned = torch.empty(steps, *batch, sigma.shape[-1])
    for t in range(steps):
        Z = forward()
        loss = 0.5 * ((C - Z) ** 2).sum(dim=(-2, -1))  # one loss per seed
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            losses[t] = loss
            learned[t] = torch.einsum("...ik,...ij,...jk->...k", u, Z, v) / sigma
    return losses, learned
# endregion


def setup(cfg, seed):
    """The target and the initial parameters of one seed (the same draws for run and run_batch)."""
    gen = torch.Generator().manual_seed(seed)
    C, u, sigma, v = make_target(cfg["n"], cfg["rank"], gen, "cpu")
    return (C, u, sigma, v), init_params(cfg["model"], cfg["n"], cfg["rank"], cfg["init_scale"], gen)


def outputs(losses, learned):
    losses, learned = losses.cpu(), learned.cpu()
    return {
        "loss": losses,
        "top_learned": learned[:, 0],
        "last_learned": learned[:, -1],
        "final_loss": float(losses[-1]),
        **drop_stats(losses),
    }


def run(cfg, seed):
    device = cfg["device"]
    target, init = setup(cfg, seed)
    C, u, sigma, v = (x.to(device) for x in target)
    params = [p.to(device).requires_grad_() for p in init]
    losses, learned = train(C, params, forward_fn(cfg["model"], params, u, v), u, sigma, v, cfg["lr"], cfg["steps"])
    return outputs(losses, learned)


def run_batch(cfg, seeds):
    """Many seeds in one vectorised call (stacked tensors); agrees with run() seed by seed."""
    device = cfg["device"]
    per_seed = [setup(cfg, seed) for seed in seeds]
    C, u, sigma, v = (torch.stack([t[i] for t, _ in per_seed]).to(device) for i in range(4))
    params = [torch.stack([p[i] for _, p in per_seed]).to(device).requires_grad_() for i in range(len(per_seed[0][1]))]
    losses, learned = train(C, params, forward_fn(cfg["model"], params, u, v), u, sigma, v, cfg["lr"], cfg["steps"])
    return [outputs(losses[:, i], learned[:, i]) for i in range(len(seeds))]


if __name__ == "__main__":
    torch.manual_seed(1)
    out = run(PARAMS, seed=1)
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            print(f"{name}: {len(value)} steps, first {value[0]:.4g}, last {value[-1]:.4g}")
        else:
            print(f"{name}: {value:.6g}")
