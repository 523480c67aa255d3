"""Tokenizers: a byte-level BPE trained locally on the training split and cached, or any transformers
tokenizer by hub id or local folder. Either way the result is addressed by a `spec` (a folder or a hub
id) that worker processes load again."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from adagc_repro.atomic import build_dir
from adagc_repro.data.hub import offline_guard
from adagc_repro.feedback import status

EOS, PAD = "<|endoftext|>", "<pad>"
_TOKENIZER_RECIPE = "bytelevel-bpe-v2"  # bump when training settings change, to invalidate caches
BPE_TRAIN_CHARS = 20_000_000  # the BPE sees at most this much of the training split (bounded time)


def tokenizer_spec(spec: str | None, corpus_key: str, train_documents, vocab_size: int, cache: Path) -> str:
    """The folder or hub id to load. `spec` None trains a BPE on `train_documents()` (an iterator factory)
    once per (corpus_key, vocab_size) and caches it."""
    if spec:
        return spec
    key = hashlib.sha256(f"{_TOKENIZER_RECIPE}|{vocab_size}|{BPE_TRAIN_CHARS}|{corpus_key}".encode()).hexdigest()[:16]
    folder = Path(cache) / "tokenizers" / f"bpe{vocab_size}-{key}"
    if not (folder / "tokenizer.json").exists():
        sample = _first_chars(train_documents(), BPE_TRAIN_CHARS)
        with status(f"training a BPE tokenizer (vocab {vocab_size}) on up to {BPE_TRAIN_CHARS:,} characters"):
            build_dir(folder, lambda tmp: train_bpe(sample, vocab_size).save_pretrained(str(tmp)))
    return str(folder)


def _first_chars(documents: Iterable[str], limit: int) -> Iterator[str]:
    total = 0

    def within(document: str) -> bool:
        nonlocal total
        total += len(document)
        return total - len(document) < limit

    return itertools.takewhile(within, documents)


def train_bpe(documents: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,  # the embedded corpus is small; 2 stops short of 8192
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)


def load_tokenizer(spec: str):
    """A transformers tokenizer from a folder or hub id, with an EOS (documents are joined with it)."""
    from transformers import AutoTokenizer

    with offline_guard("data.tokenizer", spec):
        tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_digest(tokenizer) -> str:
    """Identifies the tokenizer's behaviour (its serialized vocabulary and rules), for the manifest."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
