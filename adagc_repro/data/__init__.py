"""Token data for causal-LM training: source → tokenizer → pre-tokenized shards → blocks → loader.

`shards.prepare` tokenizes a source once into memory-mapped shards (cached by content; `adagc-repro
data prepare` does it ahead of time, a run does it on first use). Training reads fixed-length blocks
of `seq_len` tokens cut from the concatenated training split, with no cap on documents; `loader`
decides which block each rank reads at each step as a pure function of the step.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adagc_repro.data.epochs import check_epochs, epoch_of, epoch_summary
from adagc_repro.data.loader import StepLoader, rank_micro_batches
from adagc_repro.data.shards import COMMON_KEYS, TokenSplit, load_manifest, prepare, split_documents
from adagc_repro.data.sources import DATA_SOURCES
from adagc_repro.data.tokenizer import load_tokenizer
from adagc_repro.errors import ConfigError

__all__ = ["StepLoader", "rank_micro_batches", "check_epochs", "epoch_of", "epoch_summary", "split_documents",
           "build_training_data", "build_token_data", "validate_data_config", "is_contrastive"]


class BlockSet:
    """Blocks of `seq_len` consecutive tokens of one split; block i is tokens [i·seq_len, (i+1)·seq_len).

    With `document_mask` a batch also carries `position_ids` that restart after every EOS, which
    transformers' attention turns into a block-diagonal (per-document) causal mask.
    """

    def __init__(self, tokens: TokenSplit, seq_len: int, document_mask: bool = False):
        self.tokens, self.seq_len, self.document_mask = tokens, seq_len, document_mask

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        import torch

        rows = np.stack([self.tokens.read(int(i) * self.seq_len, self.seq_len) for i in indices])
        batch = {"input_ids": torch.from_numpy(rows)}
        if self.document_mask:
            batch["position_ids"] = torch.from_numpy(document_positions(rows, self.tokens.eos))
        return batch

    def blocks(self, count: int):
        """The first `count` blocks as one LongTensor [count, seq_len]."""
        return self.batch(range(count))["input_ids"]


def document_positions(rows: np.ndarray, eos: int) -> np.ndarray:
    """Position of each token inside its document: 0 at a row's start and right after each EOS."""
    columns = np.arange(rows.shape[1])
    starts = np.zeros(rows.shape, dtype=bool)
    starts[:, 0] = True
    starts[:, 1:] = rows[:, :-1] == eos
    last_start = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
    return columns - last_start


@dataclass
class TokenData:
    train: BlockSet
    val: BlockSet
    tokenizer: Any
    manifest: dict

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def num_documents(self) -> int:
        return sum(self.manifest["documents"].values())

    @property
    def facts(self) -> dict[str, str]:
        """What identifies the data of a run (site_docs depends on the machine), for its summary."""
        return {"data_fingerprint": self.manifest["fingerprint"], "data_content_hash": self.manifest["content_hash"],
                "data_tokenizer": self.manifest["tokenizer"]["digest"]}


def is_contrastive(model_cfg: Mapping[str, Any]) -> bool:
    from adagc_repro.models import model_kind

    return model_kind(model_cfg) == "contrastive"


def validate_data_config(resolved: Mapping[str, Any]) -> None:
    """The data node must name a source of the kind the model trains on (text, or image–text pairs)."""
    from adagc_repro.data.image_text import COMMON_KEYS as PAIR_KEYS
    from adagc_repro.data.image_text import IMAGE_TEXT_SOURCES

    data = resolved["data"]
    pairs = is_contrastive(resolved["model"])
    registry, common, positional = (IMAGE_TEXT_SOURCES, PAIR_KEYS, ("image_size",)) if pairs else (
        DATA_SOURCES, COMMON_KEYS, ())
    other = DATA_SOURCES if pairs else IMAGE_TEXT_SOURCES
    if data.get("source") in other and data.get("source") not in registry:
        wanted, given = ("image–text pairs", "text") if pairs else ("text", "image–text pairs")
        raise ConfigError("data", f"model={resolved['model'].get('name')} trains on {wanted}; this data set "
                          f"(source {data.get('source')!r}) holds {given}", data_options(registry))
    registry.check(data["source"], {k: v for k, v in data.items() if k not in common}, positional=positional)
    if not pairs and not 0.0 < float(data.get("val_fraction", 0.05)) < 0.5:
        raise ConfigError("data.val_fraction", f"must be in (0, 0.5), got {data.get('val_fraction')}")


def data_options(registry) -> list[str]:
    """The `data=` options (conf/data/*.yaml) whose source is registered in `registry`."""
    import yaml

    from adagc_repro.config import conf_dir

    return [f"data={path.stem}" for path in sorted((conf_dir() / "data").glob("*.yaml"))
            if (yaml.safe_load(path.read_text()) or {}).get("source") in registry]


def build_training_data(cfg):
    """Token blocks for language models; image–text pairs (text length = the model's context) for CLIP."""
    if is_contrastive(cfg.model):
        from adagc_repro.data.image_text import build_image_text_data

        return build_image_text_data(
            cfg.data, image_size=int(cfg.model.image_size), max_text_len=int(cfg.model.max_position_embeddings)
        )
    return build_token_data(cfg.data, seq_len=int(cfg.train.seq_len), cache=Path(cfg.paths.cache))


def build_token_data(data_cfg: Mapping[str, Any], *, seq_len: int, cache: Path) -> TokenData:
    """Blocks of the prepared shards (prepared now if missing, with a progress bar on a terminal)."""
    folder = prepare(data_cfg, cache, progress=sys.stderr.isatty())
    manifest = load_manifest(folder)
    if manifest["tokens"]["val"] == 0:
        raise ConfigError("data.val_fraction", f"no document was held out of {sum(manifest['documents'].values())}; raise it")
    mask = bool(data_cfg.get("document_mask", False))
    train = BlockSet(TokenSplit(folder, "train"), seq_len, mask)
    val = BlockSet(TokenSplit(folder, "val"), seq_len, mask)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("train.seq_len", f"{seq_len} is longer than the corpus allows; use fewer tokens per block")
    described = manifest["tokenizer"]
    location = Path(cache) / described["in_cache"] if described.get("in_cache") else described["spec"]
    return TokenData(train=train, val=val, tokenizer=load_tokenizer(str(location)), manifest=manifest)
