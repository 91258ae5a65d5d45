"""Runs: load a spec, plan (config x seed), execute, cache, and the results, statistics and claims over them."""
