"""Weight decay: the S-curve's exponential phase lasts longer, and the loss no longer reaches zero.

Claim 4 of the S-curves thread (Jermyn & Shlegeris, 2022): with SGD's weight_decay, weight decay
"effectively extends the exponential phase" and leaves a non-zero final loss. Same toy as
scurves.py (rank-1 target C = U V^T, n = 100, model Z = X Y^T, init 1e-3, lr 1e-3, loss
L = 1/2 * sum (C - Z)^2), trained with torch.optim.SGD(weight_decay=wd).

Why these weight decays: the loss is a sum over n^2 entries, so its gradient scales with the
target's singular value sigma1 (about n = 100 at rank 1). In the exponential phase the learned
component x*y grows by (1 + lr*(sigma1 - wd))^2 per step, so weight decay only shows once it is
a sizeable fraction of sigma1: 10, 30 and 50 are about 0.1, 0.3 and 0.5 sigma1 (values such as
1e-2 change nothing visible here). At the end, the stationary point of L + wd/2 (|X|^2 + |Y|^2)
leaves the residual wd along the learned direction: a final loss of wd^2/2.
800 steps: the largest weight decay's drop is over by about step 350 (40 runs, a few seconds).

    python experiments/weight_decay.py     # default config, seed 1; needs only torch
"""

import math

import torch

from _lowrank import crossing, drop_stats, make_target

PARAMS = {
    "n": 100,             # matrix size (n x n)
    "rank": 1,            # rank r of the target C and of the model's factors
    "init_scale": 1e-3,   # std of the model's initial entries (s)
    "lr": 1e-3,           # SGD learning rate
    "weight_decay": 0.0,  # SGD weight_decay (L2 coefficient, in the loss's units: compare with sigma1 ~ n)
    "steps": 800,         # full-batch gradient steps
    "device": "cpu",      # "cpu" or "cuda"
}
SWEEP = {"weight_decay": [0.0, 10.0, 30.0, 50.0]}
SEEDS = 10
OUTPUTS = {
    "loss": "series: training loss L at each step (before the update), without the weight-decay term",
    "top_learned": "series: fraction of the target's top component learned, u1^T Z v1 / sigma1",
    "final_loss": "scalar: loss after the last step",
    "final_frac": "scalar: final loss as a fraction of the initial loss",
    "drop_step": "scalar: first step where the loss is halfway between its start and its final value",
    "plateau_steps": "scalar: steps before 10% of the total loss drop has happened",
    "sharpness": "scalar: plateau_steps / steps from 10% to 90% of the drop (above 1: plateau then sharp drop)",
    "growth_rate": "scalar: measured exponential growth rate of top_learned per step, while it rises from 1e-4 to 1e-2",
    "predicted_rate": "scalar: 2 * ln(1 + lr * (sigma1 - weight_decay)), the linearised SGD growth rate of x*y",
    "stationary_loss": "scalar: wd^2/2, the loss at the stationary point of L + wd/2 (|X|^2 + |Y|^2)",
    "sigma1": "scalar: the target's largest singular value",
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
    "weight_decay": "weight decay λ",
    "sharpness": "sharpness",
    "growth_rate": ("growth rate", "per step"),
    "predicted_rate": ("predicted growth rate", "per step"),
    "final_frac": "final loss / initial loss",
    "stationary_loss": "stationary loss λ²/2",
    "sigma1": "σ1",
}


def drops_later(r):
    """Per seed: the drop step strictly increases along the sweep's weight decays."""
    groups = r.group_by("weight_decay")
    steps = [groups[wd].scalar("drop_step") for wd in sorted(groups)]
    return [all(b > a for a, b in zip(seed, seed[1:])) for seed in zip(*steps)]


def leaves_loss(r):
    """Per seed: every wd > 0 ends above wd = 0 by more than 0.1% of the initial loss."""
    base = r.where(weight_decay=0.0).scalar("final_frac")
    decayed = [group.scalar("final_frac") for wd, group in r.group_by("weight_decay").items() if wd > 0]
    return [all(frac[i] > base[i] + 1e-3 for frac in decayed) for i in range(len(base))]


CLAIMS = [
    {"claim": "Weight decay extends the exponential phase: the loss drops later the larger the weight decay.",
     "check": drops_later, "metric": None},
    {"claim": "It does so by slowing the exponential growth: the learned component grows at the linearised "
              "rate 2 ln(1 + lr (sigma1 - wd)) per step (within 5%).",
     "per": "weight_decay",
     "check": lambda r: abs(r.scalar("growth_rate") / r.scalar("predicted_rate") - 1) < 0.05,
     "metric": "growth_rate"},
    {"claim": "Weight decay leaves a non-zero final loss: above the final loss without weight decay by more "
              "than 0.1% of the initial loss, for every weight decay > 0.",
     "check": leaves_loss, "metric": None},
    {"claim": "The loss left over is the stationary value wd^2/2 (within 1%).",
     "where": {"weight_decay": [10.0, 30.0, 50.0]}, "per": "weight_decay",
     "check": lambda r: abs(r.scalar("final_loss") / r.scalar("stationary_loss") - 1) < 0.01,
     "metric": "final_loss"},
]


# region: training-step
def train(C, X, Y, u, sigma, v, lr, weight_decay, steps):
    """Full-batch SGD with weight decay on L = 1/2 * sum (C - Z)^2, logging L and the learned top component."""
    opt = torch.optim.SGD([X, Y], lr=lr, weight_decay=weight_decay)
    losses = torch.empty(steps)
    learned = torch.empty(steps)
    for t in range(steps):
        Z = X @ Y.T
        loss = 0.5 * ((C - Z) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            losses[t] = loss.detach()
            learned[t] = (u[:, 0] @ Z @ v[:, 0]) / sigma[0]
    return losses, learned
# endregion


def growth_rate(learned, low=1e-4, high=1e-2):
    """Log-growth per step of a curve rising exponentially through [low, high]."""
    t_low, t_high = crossing(learned, low), crossing(learned, high)
    return math.log(high / low) / max(t_high - t_low, 1)


def run(cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    device, n, rank, s = cfg["device"], cfg["n"], cfg["rank"], cfg["init_scale"]
    C, u, sigma, v = make_target(n, rank, gen, device)
    X = (s * torch.randn(n, rank, generator=gen)).to(device).requires_grad_()
    Y = (s * torch.randn(n, rank, generator=gen)).to(device).requires_grad_()
    losses, learned = train(C, X, Y, u, sigma, v, cfg["lr"], cfg["weight_decay"], cfg["steps"])
    losses, learned = losses.cpu(), learned.cpu()
    sigma1 = float(sigma[0])
    return {
        "loss": losses,
        "top_learned": learned,
        "final_loss": float(losses[-1]),
        "final_frac": float(losses[-1] / losses[0]),
        **drop_stats(losses),
        "growth_rate": growth_rate(learned),
        "predicted_rate": 2 * math.log(1 + cfg["lr"] * (sigma1 - cfg["weight_decay"])),
        "stationary_loss": cfg["weight_decay"] ** 2 / 2,
        "sigma1": sigma1,
    }


if __name__ == "__main__":
    torch.manual_seed(1)
    out = run({**PARAMS, "weight_decay": 30.0}, seed=1)
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            print(f"{name}: {len(value)} steps, first {value[0]:.4g}, last {value[-1]:.4g}")
        else:
            print(f"{name}: {value:.6g}")
