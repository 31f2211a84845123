"""Errors shared by every layer of `flowsoc.rl` (no dependencies: the dataset generator's workers import it)."""


class DatasetError(ValueError):
    """A dataset name, file or its contents is unusable. The message names the file or name and the fix."""


__all__ = ["DatasetError"]
