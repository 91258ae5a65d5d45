"""expost: turn small PyTorch experiments into reproducible posts."""

__version__ = "0.1.0"

# Bumped whenever the on-disk result format changes; part of every cache key.
RESULT_FORMAT = 1
