"""Overhead row: what logging a series point per step plus the cache write adds to a training loop.

Runs in one process (so interpreter and import time are not part of either side): the scurves
training step (rank 1, n=100, full-batch SGD) for STEPS steps, once without any logging and once
recording the loss with `losses.append(loss.item())` (the common idiom), then converting it with
`expost.runs.outputs.convert_outputs` and writing it with `expost.runs.cache.Cache.write`, the same calls a
worker makes (a third variant records into a preallocated tensor instead, the GPU idiom). The
variants alternate, REPS times each; prints one JSON line with every timing.

    python bench/overhead.py --cache /tmp/overhead-cache --reps 7
"""

import argparse
import json
import time

import torch

from expost.runs.cache import Cache
from expost.runs.outputs import convert_outputs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache", required=True, help="cache folder (a temp dir)")
parser.add_argument("--steps", type=int, default=10_000)
parser.add_argument("--reps", type=int, default=7)
parser.add_argument("--n", type=int, default=100)
args = parser.parse_args()

torch.set_num_threads(1)  # as in an expost worker when -j > 1; also steadier on a shared machine


def setup(seed):
    gen = torch.Generator().manual_seed(seed)
    U, V = torch.randn(args.n, 1, generator=gen), torch.randn(args.n, 1, generator=gen)
    C = U @ V.T
    X = (1e-3 * torch.randn(args.n, 1, generator=gen)).requires_grad_()
    Y = (1e-3 * torch.randn(args.n, 1, generator=gen)).requires_grad_()
    return C, X, Y, torch.optim.SGD([X, Y], lr=1e-3)


def plain(seed):
    C, X, Y, opt = setup(seed)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = 0.5 * ((C - X @ Y.T) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = loss.detach().item()
    return time.perf_counter() - t0, final


def store(seed, cache, key, losses, final):
    """convert_outputs + Cache.write: the calls the expost parent makes with a run's return value."""
    scalars, series, nonfinite = convert_outputs({"loss": losses, "final_loss": final},
                                                 {"loss": "series", "final_loss": "scalar"})
    meta = {"experiment": "overhead", "config": {"steps": args.steps}, "point": {}, "seed": seed,
            "scalars": scalars, "series_len": {k: int(v.size) for k, v in series.items()},
            "nonfinite": nonfinite, "wall_s": 0.0, "source_hash": "bench"}
    cache.write(key, meta, series)


def logged(seed, cache, key):
    """The common idiom: `losses.append(loss.item())` every step, then return the list."""
    C, X, Y, opt = setup(seed)
    t0 = time.perf_counter()
    losses = []
    for t in range(args.steps):
        loss = 0.5 * ((C - X @ Y.T) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    t_loop = time.perf_counter()
    store(seed, cache, key, losses, losses[-1])
    t1 = time.perf_counter()
    return t1 - t0, t1 - t_loop


def logged_tensor(seed, cache, key):
    """The same into a preallocated tensor (`losses[t] = loss.detach()`): no host sync per step,
    the idiom for a GPU, and batched seeds' only option; slower per step on a CPU."""
    C, X, Y, opt = setup(seed)
    t0 = time.perf_counter()
    losses = torch.empty(args.steps)
    for t in range(args.steps):
        loss = 0.5 * ((C - X @ Y.T) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[t] = loss.detach()
    store(seed, cache, key, losses, float(losses[-1]))
    return time.perf_counter() - t0


cache = Cache(args.cache)
plain(0)  # warm-up: first autograd call, allocator, caches
logged(0, cache, "warmup" + "0" * 58)
rows = []
for rep in range(args.reps):
    seed = rep + 1
    a, _ = plain(seed)
    b, write = logged(seed, cache, f"{seed:064x}")
    c = logged_tensor(seed, cache, f"{seed + 1000:064x}")
    rows.append({"plain_s": a, "logged_s": b, "convert_write_s": write, "tensor_s": c})
print(json.dumps({"steps": args.steps, "reps": rows}))
