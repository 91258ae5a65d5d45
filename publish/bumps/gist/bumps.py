"""Bumps: at rank 2 the loss can drop twice, once per component, but how often depends on the seed.

Claims 3 and 7 of the S-curves thread (Jermyn & Shlegeris, 2022, and Lawrence Chan's seeds in
the comments): each target component is learned on its own S-curve, larger singular value first,
so at rank 2 the loss can show two separate drops ("bumps"); and the number of bumps varies
significantly by seed ("I caution against over-interpreting the results of single runs").
Same toy as scurves.py at rank 2 (n = 100, lr 1e-3, L = 1/2 * sum (C - Z)^2, full-batch SGD).

How bumps are counted (count_bumps): the rate of descent -dL/dt, as a fraction of the total
drop per step and smoothed over 5 steps, has one peak per drop. Local maxima below 10% of the
highest are ignored. Walking forward in time, a peak starts a new bump when the rate between it
and the current bump's peak falls below `dip` (default 0.5) times the smaller of the two peaks:
the two drops are resolved at half maximum. Otherwise the peaks merge into one bump. dip_ratio
records that lowest valley / smaller peak (1: no dip; 0: the loss stops falling between drops),
so the threshold's effect can be read off; `--set dip=0.7` recounts with another threshold.

Settings: three init scales, because a smaller init lengthens both plateaus by ~ln(1/s) / sigma_k
and so separates the two drops more. 600 steps (the second drop ends by ~step 250 at s = 1e-5).
30 runs, a few seconds.

    python experiments/bumps.py            # default config, seed 1; needs only torch
"""

import statistics

import torch

from _lowrank import crossing, drop_stats, make_target

PARAMS = {
    "n": 100,             # matrix size (n x n)
    "rank": 2,            # rank r of the target C and of the model's factors
    "init_scale": 1e-3,   # std of the model's initial entries (s)
    "lr": 1e-3,           # SGD learning rate
    "steps": 600,         # full-batch gradient steps
    "dip": 0.5,           # two drops are separate when the descent rate between them falls below dip x the smaller peak
    "device": "cpu",      # "cpu" or "cuda"
}
SWEEP = {"init_scale": [1e-3, 1e-4, 1e-5]}
SEEDS = 10
OUTPUTS = {
    "loss": "series: training loss L at each step (before the update)",
    "learned_1": "series: fraction of the larger target component learned, u1^T Z v1 / sigma1",
    "learned_2": "series: fraction of the smaller target component learned, u2^T Z v2 / sigma2",
    "bumps": "scalar: number of separate drops of the loss (peaks of -dL/dt resolved at `dip`)",
    "dip_ratio": "scalar: lowest descent rate between two peaks / the smaller peak (1 if only one peak)",
    "sigma_ratio": "scalar: sigma1 / sigma2 of the target",
    "half_step_1": "scalar: first step where learned_1 reaches 0.5",
    "half_step_2": "scalar: first step where learned_2 reaches 0.5",
    "sharpness_1": "scalar: for learned_1, steps to reach 0.1 / steps from 0.1 to 0.9 (above 1: an S-curve)",
    "sharpness_2": "scalar: for learned_2, steps to reach 0.1 / steps from 0.1 to 0.9 (above 1: an S-curve)",
    "drop_step": "scalar: first step where the loss is halfway between its start and its final value",
}

# What figures, tables and generated sentences call them (a label, or a label and its unit)
LABELS = {
    "init_scale": "init scale s",
    "lr": "learning rate η",
    "rank": "rank r",
    "drop_step": ("drop step", "steps"),
    "loss": "training loss L",
    "learned_1": "fraction of component 1 learned",
    "learned_2": "fraction of component 2 learned",
    "bumps": "bumps counted",
    "dip_ratio": "dip ratio",
    "sigma_ratio": "σ1/σ2",
    "half_step_1": ("half step of component 1", "steps"),
    "half_step_2": ("half step of component 2", "steps"),
    "sharpness_1": "sharpness of component 1",
    "sharpness_2": "sharpness of component 2",
}


def ratio_predicts_bumps(r):
    """Median sigma1/sigma2 of two-bump seeds above that of one-bump seeds (None if a group is empty)."""
    bumps, ratio = r.scalar("bumps"), r.scalar("sigma_ratio")
    two = [q for b, q in zip(bumps, ratio) if b >= 2]
    one = [q for b, q in zip(bumps, ratio) if b < 2]
    if not two or not one:
        return None
    return statistics.median(two) > statistics.median(one)


CLAIMS = [
    {"claim": "At rank 2 the loss can show two separate drops: at least one seed has two bumps.",
     "per": "init_scale", "check": lambda r: bool((r.scalar("bumps") >= 2).any()), "metric": "bumps"},
    {"claim": "At rank 2 the loss shows two separate drops in most seeds.",
     "per": "init_scale", "min_frac": 0.6, "check": lambda r: r.scalar("bumps") >= 2, "metric": "dip_ratio",
     "xfail": {1e-3: "two drops are a minority at this init scale (the thread's seed caution)",
               1e-4: "two drops are a minority at this init scale (the thread's seed caution)"}},
    {"claim": "Each component is learned on its own S-curve (sharpness > 1), the larger singular value first.",
     "per": "init_scale",
     "check": lambda r: ((r.scalar("half_step_1") < r.scalar("half_step_2"))
                         & (r.scalar("sharpness_1") > 1) & (r.scalar("sharpness_2") > 1))},
    {"claim": "Seeds with a larger sigma1/sigma2 show two separate drops more often: their median ratio "
              "is above that of one-bump seeds.",
     "per": "init_scale", "check": ratio_predicts_bumps, "metric": "sigma_ratio",
     "xfail": {1e-3: "at this init scale the ratio does not separate the seeds (fragile to the counter)"}},
]


# region: training-step
def train(C, X, Y, u, sigma, v, lr, steps):
    """Full-batch SGD on L = 1/2 * sum (C - Z)^2, logging L and the learned fraction of each component."""
    opt = torch.optim.SGD([X, Y], lr=lr)
    losses = torch.empty(steps)
    learned = torch.empty(steps, len(sigma))
    for t in range(steps):
        Z = X @ Y.T
        loss = 0.5 * ((C - Z) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            losses[t] = loss.detach()
            learned[t] = torch.einsum("ik,ij,jk->k", u, Z, v) / sigma
    return losses, learned
# endregion


def count_bumps(losses, dip, min_height=0.1, smooth=5):
    """(number of separate drops, lowest valley / smaller peak) from the loss's rate of descent."""
    L = losses.double()
    rate = (L[:-1] - L[1:]) / (L[0] - L[-1])  # fraction of the total drop done at each step
    rate = torch.nn.functional.avg_pool1d(rate.view(1, 1, -1), smooth, 1, padding=smooth // 2,
                                          count_include_pad=False).view(-1).tolist()
    top = max(rate)
    peaks = [i for i in range(1, len(rate) - 1)
             if rate[i - 1] <= rate[i] > rate[i + 1] and rate[i] >= min_height * top]
    bumps, current, lowest = 0, None, 1.0
    for p in peaks:
        if current is None:
            bumps, current = 1, p
            continue
        ratio = min(rate[current:p + 1]) / min(rate[current], rate[p])
        lowest = min(lowest, ratio)
        if ratio < dip:  # resolved: a new drop starts
            bumps, current = bumps + 1, p
        elif rate[p] > rate[current]:  # same drop, higher peak
            current = p
    return bumps, lowest


def component_stats(curve):
    """Half step and S-curve sharpness of a learned fraction rising from ~0 to ~1."""
    t10, t50, t90 = crossing(curve, 0.1), crossing(curve, 0.5), crossing(curve, 0.9)
    return t50, t10 / max(t90 - t10, 1)


def run(cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    device, n, rank, s = cfg["device"], cfg["n"], cfg["rank"], cfg["init_scale"]
    C, u, sigma, v = make_target(n, rank, gen, device)
    X = (s * torch.randn(n, rank, generator=gen)).to(device).requires_grad_()
    Y = (s * torch.randn(n, rank, generator=gen)).to(device).requires_grad_()
    losses, learned = train(C, X, Y, u, sigma, v, cfg["lr"], cfg["steps"])
    losses, learned, sigma = losses.cpu(), learned.cpu(), sigma.cpu()
    bumps, dip_ratio = count_bumps(losses, cfg["dip"])
    half_1, sharp_1 = component_stats(learned[:, 0])
    half_2, sharp_2 = component_stats(learned[:, -1])
    return {
        "loss": losses,
        "learned_1": learned[:, 0],
        "learned_2": learned[:, -1],
        "bumps": bumps,
        "dip_ratio": dip_ratio,
        "sigma_ratio": float(sigma[0] / sigma[-1]),
        "half_step_1": half_1,
        "half_step_2": half_2,
        "sharpness_1": sharp_1,
        "sharpness_2": sharp_2,
        "drop_step": drop_stats(losses)["drop_step"],
    }


if __name__ == "__main__":
    torch.manual_seed(1)
    out = run(PARAMS, seed=1)
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            print(f"{name}: {len(value)} steps, first {value[0]:.4g}, last {value[-1]:.4g}")
        else:
            print(f"{name}: {value:.6g}")
