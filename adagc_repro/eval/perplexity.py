"""Token-level perplexity of a causal LM on pre-cut blocks or on raw text (spec §2.5).

Every window is scored with the model's own next-token predictions: logits at position i predict
token i+1, so a window of L tokens scores at most L-1 of them. The loss is the mean negative
log-likelihood (nats) over all scored tokens, ppl = exp(loss). Bits per byte divide the total NLL by
ln 2 and by the UTF-8 bytes of the scored tokens' text, which makes models with different
tokenizers comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from adagc_repro.errors import ConfigError
from adagc_repro.models.attention import causal_kwargs

_MAX_LOG_FLOAT = math.log(1.7976931348623157e308)  # exp() of anything larger overflows


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    kwargs = causal_kwargs(model, {}) if hasattr(model, "config") else {}  # unpadded windows: implicit causal mask
    output = model(input_ids=input_ids, **kwargs)
    return output.logits if hasattr(output, "logits") else output


class _EvalMode:
    """Eval mode and no_grad for the duration of a block; the previous train/eval mode comes back."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        self.model.eval()
        return self.model

    def __exit__(self, *exc_info):
        self.no_grad.__exit__(*exc_info)
        self.model.train(self.was_training)


def _scored_nll(model, windows: torch.Tensor, first_scored: torch.Tensor, device) -> torch.Tensor:
    """Summed NLL (fp32) of windows[b, j] for j ≥ first_scored[b], each predicted from windows[b, :j]."""
    windows = windows.to(device)
    logits = _logits(model, windows)[:, :-1].float()
    targets = windows[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    positions = torch.arange(1, windows.size(1), device=device)
    scored = positions[None, :] >= first_scored.to(device)[:, None]
    return (nll.view_as(targets) * scored).sum()


def _summary(total_nll: float, tokens: int) -> dict[str, float | int]:
    loss = total_nll / tokens
    return {"loss": loss, "ppl": math.inf if loss > _MAX_LOG_FLOAT else math.exp(loss), "tokens": tokens}


def evaluate_blocks(model, blocks: torch.Tensor, *, batch_size: int, device) -> dict[str, float | int]:
    """Mean next-token NLL over blocks [N, T] (T-1 predictions per block), e.g. a held-out split cut
    like the training data. Returns {"loss", "ppl", "tokens"}."""
    if blocks.ndim != 2 or blocks.size(1) < 2 or blocks.size(0) == 0:
        raise ConfigError(
            "eval.blocks", f"need a non-empty [N, T] tensor with T >= 2, got {tuple(blocks.shape)}"
        )
    first_scored = torch.ones(blocks.size(0), dtype=torch.long)
    total = 0.0
    with _EvalMode(model):
        for start in range(0, blocks.size(0), batch_size):
            stop = start + batch_size
            total += _scored_nll(model, blocks[start:stop], first_scored[start:stop], device).item()
    return _summary(total, blocks.size(0) * (blocks.size(1) - 1))


def text_windows(n_tokens: int, seq_len: int, stride: int | None) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) token positions of each window over a text of n_tokens.

    stride None (or == seq_len): non-overlapping windows; the first token of each window is context
    only. stride < seq_len: the sliding-window protocol; windows advance by `stride` and score only
    the tokens no earlier window scored, so every token but the first is scored exactly once, with
    at least seq_len - stride tokens of context.
    """
    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise ConfigError("eval.wikitext.stride", f"must be in [1, seq_len={seq_len}], got {stride}")
    scored_until = 1
    for begin in range(0, max(n_tokens - 1, 0), stride):
        end = min(begin + seq_len, n_tokens)
        yield begin, end, max(scored_until, begin + 1)
        scored_until = end
        if end == n_tokens:
            return


def evaluate_text_perplexity(
    model,
    tokenizer,
    text: str,
    *,
    seq_len: int,
    stride: int | None = None,
    batch_size: int,
    device,
    max_tokens: int | None = None,
) -> dict[str, float | int]:
    """Perplexity and bits per byte of `text` (see `text_windows` for the protocol).

    The text is tokenized once without special tokens; `max_tokens` keeps only its first tokens.
    Returns {"loss", "ppl", "bits_per_byte", "tokens", "bytes"}; tokens and bytes are those scored.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)
    windows = list(text_windows(len(ids), seq_len, stride))
    if not windows:
        raise ConfigError("eval.wikitext", f"the text has {len(ids)} tokens; at least 2 are needed")
    total_nll, tokens, scored_bytes = 0.0, 0, 0
    # Windows of equal length are batched together (all but possibly the last have length seq_len).
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for window in windows:
        by_length.setdefault(window[1] - window[0], []).append(window)
    with _EvalMode(model):
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                inputs = torch.stack([ids[begin:end] for begin, end, _ in batch])
                first = torch.tensor([scored - begin for begin, _, scored in batch])
                total_nll += _scored_nll(model, inputs, first, device).item()
    for _, end, scored in windows:
        tokens += end - scored
        scored_text = tokenizer.decode(ids[scored:end].tolist(), clean_up_tokenization_spaces=False)
        scored_bytes += len(scored_text.encode("utf-8"))
    result = _summary(total_nll, tokens)
    result["bits_per_byte"] = total_nll / math.log(2) / scored_bytes
    result["bytes"] = scored_bytes
    return result
