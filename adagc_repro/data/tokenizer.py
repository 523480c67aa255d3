"""Byte-level BPE tokenizers: trained locally on the training split and cached, or loaded by name."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from adagc_repro.atomic import build_dir
from adagc_repro.data.hub import offline_guard
from adagc_repro.feedback import status

EOS, PAD = "<|endoftext|>", "<pad>"
_TOKENIZER_RECIPE = "bytelevel-bpe-v1"  # bump when training settings change, to invalidate caches


def load_or_train_tokenizer(spec: str | None, documents: Sequence[str], vocab_size: int, cache: Path):
    """`spec` None trains a BPE on `documents` (cached by content); otherwise a local path or hub id."""
    if spec:
        return _load_named(spec)
    digest = hashlib.sha256(_TOKENIZER_RECIPE.encode())
    digest.update(str(vocab_size).encode())
    for document in documents:
        digest.update(document.encode())
    folder = Path(cache) / "tokenizers" / f"bpe{vocab_size}-{digest.hexdigest()[:16]}"
    if not (folder / "tokenizer.json").exists():
        with status(f"training a BPE tokenizer (vocab {vocab_size}) on {len(documents):,} documents"):
            build_dir(folder, lambda tmp: train_bpe(documents, vocab_size).save_pretrained(str(tmp)))
    return _load_named(str(folder))


def train_bpe(documents: Sequence[str], vocab_size: int):
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


def _load_named(spec: str):
    from transformers import AutoTokenizer

    with offline_guard("data.tokenizer", spec):
        tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
