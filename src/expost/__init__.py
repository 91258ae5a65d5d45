"""expost: turn small PyTorch experiments into reproducible posts."""

__version__ = "0.1.0"

# Bumped whenever the on-disk result format changes; part of every cache key.
RESULT_FORMAT = 2  # 2: result.json carries record_sha256 (scalars checksummed), optional outputs

from expost.workspace import BuildReport, PostResult, Progress, RunReport, Workspace  # noqa: E402  (the front door)

__all__ = ["Workspace", "Progress", "RunReport", "BuildReport", "PostResult", "__version__"]
