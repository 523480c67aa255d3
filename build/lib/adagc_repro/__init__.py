"""adagc-repro: a reproduction harness for adaptive gradient clipping in LLM pretraining."""

__version__ = "0.1.0"
