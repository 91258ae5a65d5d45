"""Store-and-plot row: peak memory of writing, reading and plotting 1000 seeds x 1e5 steps.

Writes SEEDS cache entries of one STEPS-long float32 series each with `expost.runs.cache.Cache.write`,
reads them back (checksums verified, as a render does) and draws them with
`expost.posts.figures.curves`. Prints one JSON line with the phase timings and the peak RSS of this
process (`resource.getrusage`, so it covers every phase).

--via cache:     Cache.read + Entry.series into one preallocated float32 seeds x steps array
--via resultset: ResultSet.series, the float64 path that figure(r, "curves", ...) in a post takes

    python bench/store_plot.py --cache /tmp/store-cache --out /tmp/store.png --via cache
"""

import argparse
import hashlib
import json
import resource
import time

import numpy as np

from expost.runs.cache import Cache
from expost.posts.figures import curves
from expost.runs.results import Record, ResultSet

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache", required=True, help="cache folder (a temp dir)")
parser.add_argument("--out", required=True, help="figure path (.png)")
parser.add_argument("--seeds", type=int, default=1000)
parser.add_argument("--steps", type=int, default=100_000)
parser.add_argument("--via", choices=("cache", "resultset"), default="cache")
args = parser.parse_args()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


cache = Cache(args.cache)
keys = [hashlib.sha256(f"store-{seed}".encode()).hexdigest() for seed in range(1, args.seeds + 1)]
t = {"start": time.perf_counter()}
base = 1 / (1 + np.exp((np.arange(args.steps) - args.steps / 2) / (args.steps / 50)))
for seed, key in enumerate(keys, 1):
    if cache.has(key):
        continue
    rng = np.random.default_rng(seed)
    loss = (base + 1e-3 * rng.random(args.steps)).astype(np.float32)
    meta = {"experiment": "store", "config": {"steps": args.steps}, "point": {}, "seed": seed,
            "scalars": {"final_loss": float(loss[-1])}, "series_len": {"loss": args.steps},
            "nonfinite": [], "wall_s": 0.0, "source_hash": "bench"}
    cache.write(key, meta, {"loss": loss})
t["written"] = time.perf_counter()
mem = {"after_write_mib": peak_mib()}

entries = [cache.read(key) for key in keys]  # verifies every series' sha256
if any(e is None for e in entries):
    raise SystemExit("a cache entry was missing or corrupt")
if args.via == "cache":
    data = np.empty((args.seeds, args.steps), dtype=np.float32)
    for i, e in enumerate(entries):
        data[i] = e.series("loss")
else:
    records = [Record("store", {}, {"steps": args.steps}, e.meta["seed"], e.meta["scalars"], e.series)
               for e in entries]
    data = ResultSet(records, {"loss": "series", "final_loss": "scalar"}, "store").series("loss")
t["loaded"] = time.perf_counter()
mem["after_load_mib"] = peak_mib()

info = curves(args.out, {"loss": data}, logy=True, ylabel="loss")
t["plotted"] = time.perf_counter()
mem["peak_mib"] = peak_mib()
print(json.dumps({"via": args.via, "seeds": args.seeds, "steps": args.steps, "dtype": str(data.dtype),
                  "write_s": t["written"] - t["start"], "load_s": t["loaded"] - t["written"],
                  "plot_s": t["plotted"] - t["loaded"], "drawn_points_per_line": info["conditions"]["loss"]["max_points"],
                  **mem}))
