"""flowsoc: fine-tuning flow-matching models by stochastic optimal control."""

import importlib.metadata


__version__ = importlib.metadata.version("flowsoc")
