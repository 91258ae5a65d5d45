"""Baseline for the cold-run rows: the same 10 seeds as `expost run`, as a plain loop in one process.

Imports the experiment's own functions (so the work per seed is identical), seeds every RNG per
seed the way expost does, runs the seeds one after another and saves each seed's outputs with
numpy, as a hand-written script would. No cache, no workers, no planning.

    python bench/handwritten_loop.py --experiments experiments --out /tmp/loop-out
"""

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--experiments", default=str(Path(__file__).resolve().parent.parent / "experiments"),
                    help="folder holding scurves.py and _lowrank.py")
parser.add_argument("--out", required=True, help="folder for the per-seed .npz results")
parser.add_argument("--seeds", type=int, default=10)
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

sys.path.insert(0, args.experiments)
import scurves  # noqa: E402  (the experiment file itself: same model, target and training step)

cfg = {**scurves.PARAMS, "model": "factored", "rank": 1, "init_scale": 1e-3, "steps": args.steps,
       "device": args.device}
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for seed in range(1, args.seeds + 1):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    result = scurves.run(cfg, seed)
    np.savez(out / f"seed{seed}.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in result.items()})
