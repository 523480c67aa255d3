"""Evaluation: WikiText / held-out perplexity and lm-eval downstream accuracy.

Importing this package does not import torch; the perplexity functions load it on first use.
"""

from adagc_repro.eval.lm_eval_runner import run_lm_eval
from adagc_repro.eval.run_eval import eval_metrics, evaluate_run, run_evaluations
from adagc_repro.eval.wikitext import load_wikitext

_TORCH_FUNCTIONS = ("evaluate_blocks", "evaluate_text_perplexity")

__all__ = [
    *_TORCH_FUNCTIONS,
    "eval_metrics",
    "evaluate_run",
    "load_wikitext",
    "run_evaluations",
    "run_lm_eval",
]


def __getattr__(name: str):
    if name in _TORCH_FUNCTIONS:
        from adagc_repro.eval import perplexity

        return getattr(perplexity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
