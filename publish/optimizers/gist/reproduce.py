"""Rerun the runs behind this gist's post and compare them with its results-*.json files.

    pip install -r requirements.txt
    python reproduce.py                  # every run (see results-*.json for how many)
    python reproduce.py --seeds 2        # only seeds 1 and 2 of every config
    python reproduce.py --experiment NAME

Needs only the packages in requirements.txt: it imports each experiment script of this folder,
seeds random, numpy and torch as expost did (seeds 1..N; a script with run_batch ran in blocks of
10 seeds, seeded with the block's first), calls run() or run_batch() with each recorded config,
and compares every scalar output with the recorded value: identical, within tolerance (relative
1e-5), or drifted. Exit status 1 if any run drifted or failed. Written by expost; not edited by hand.
"""

import argparse
import importlib
import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH_BLOCK = 10
RTOL = 1e-5


def seed_everything(seed):
    random.seed(seed)
    try:
        import numpy
        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def number(value):
    """A returned scalar as a float (tensors and numpy numbers included); None stays None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def compare(recorded, got):
    if recorded is None or got is None:
        return "identical" if recorded is None and got is None else "drifted"
    if recorded == got or (math.isnan(recorded) and math.isnan(got)):
        return "identical"
    if math.isclose(recorded, got, rel_tol=RTOL, abs_tol=1e-12):
        return "within tolerance"
    return "drifted"


def blocks(runs, batched):
    """(config, seeds) in the order expost ran them: one seed, or a block of 10 for run_batch."""
    if not batched:
        return [(r["config"], [r["seed"]]) for r in runs]
    out = {}
    for r in runs:
        block = (r["seed"] - 1) // BATCH_BLOCK
        key = (json.dumps(r["config"], sort_keys=True), block)
        out.setdefault(key, (r["config"], list(range(block * BATCH_BLOCK + 1, (block + 1) * BATCH_BLOCK + 1))))
    return list(out.values())


def reproduce(path, max_seed):
    data = json.loads(path.read_text())
    name = data["experiment"]
    scalars = [n for n, d in data["outputs"].items() if d.split(":")[0].rstrip("?") == "scalar"]
    runs = [r for r in data["runs"] if max_seed is None or r["seed"] <= max_seed]
    recorded = {(json.dumps(r["config"], sort_keys=True), r["seed"]): r["scalars"] for r in runs}
    module = importlib.import_module(name)
    batched = hasattr(module, "run_batch")
    counts = {"identical": 0, "within tolerance": 0, "drifted": 0, "failed": 0}
    for cfg, seeds in blocks(runs, batched):
        seed_everything(seeds[0])
        try:
            outs = module.run_batch(cfg, seeds) if batched else [module.run(cfg, seeds[0])]
        except Exception as e:
            print(f"{name} {cfg} seeds {seeds[0]}-{seeds[-1]}: FAILED: {type(e).__name__}: {e}")
            counts["failed"] += len(seeds)
            continue
        for seed, out in zip(seeds, outs):
            want = recorded.get((json.dumps(cfg, sort_keys=True), seed))
            if want is None:
                continue  # a seed of the block that the post did not use
            verdicts = {n: compare(want.get(n), number(out.get(n))) for n in scalars}
            worst = max(verdicts.values(), key=["identical", "within tolerance", "drifted"].index, default="identical")
            counts[worst] += 1
            if worst == "drifted":
                bad = ", ".join(f"{n}: recorded {want.get(n)!r}, got {number(out.get(n))!r}"
                                for n, v in verdicts.items() if v == "drifted")
                print(f"{name} {cfg} seed {seed}: DRIFTED: {bad}")
    print(f"{name}: {sum(counts.values())} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return counts["drifted"] == 0 and counts["failed"] == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="only seeds 1..N of every config")
    parser.add_argument("--experiment", default=None, help="only this experiment")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    files = sorted(HERE.glob("results-*.json"))
    if args.experiment:
        files = [p for p in files if p.name == f"results-{args.experiment}.json"]
    if not files:
        sys.exit(f"no results-*.json{' for ' + args.experiment if args.experiment else ''} next to {__file__}")
    ok = all([reproduce(p, args.seeds) for p in files])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
