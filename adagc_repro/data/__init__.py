"""Token data for causal-LM training: documents → held-out split → tokenizer → packed blocks.

Blocks are fixed-length (`seq_len`) runs of tokens from documents joined with EOS, packed with
`datasets` and cached on disk by content, so a second run starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adagc_repro.atomic import build_dir
from adagc_repro.data.sources import DATA_SOURCES
from adagc_repro.data.tokenizer import load_or_train_tokenizer
from adagc_repro.errors import ConfigError
from adagc_repro.feedback import status

COMMON_KEYS = ("source", "tokenizer", "vocab_size", "val_fraction")
_PACKING_RECIPE = "eos-joined-v1"


class BlockSet:
    """Packed token blocks (a memory-mapped `datasets.Dataset`) behind the loop's batch interface."""

    def __init__(self, table):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return {"input_ids": self.table[list(indices)]["input_ids"]}

    def blocks(self, count: int):
        """The first `count` blocks as one LongTensor [count, seq_len]."""
        return self.table[:count]["input_ids"]


@dataclass
class TokenData:
    train: BlockSet
    val: BlockSet
    tokenizer: Any
    num_documents: int

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


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
        DATA_SOURCES, COMMON_KEYS, ("cache",))
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
    data = dict(data_cfg)
    source_kwargs = {k: v for k, v in data.items() if k not in COMMON_KEYS}
    documents = DATA_SOURCES.build(data["source"], Path(cache), **source_kwargs)
    train_docs, val_docs = split_documents(documents, float(data.get("val_fraction", 0.05)))
    if not val_docs:
        raise ConfigError("data.val_fraction", f"no document was held out of {len(documents)}; raise it")
    tokenizer = load_or_train_tokenizer(data.get("tokenizer"), train_docs, int(data.get("vocab_size", 8192)), cache)
    train = BlockSet(pack_blocks(train_docs, tokenizer, seq_len, cache))
    val = BlockSet(pack_blocks(val_docs, tokenizer, seq_len, cache))
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("train.seq_len", f"{seq_len} is longer than the corpus allows; use fewer tokens per block")
    return TokenData(train=train, val=val, tokenizer=tokenizer, num_documents=len(documents))


def split_documents(documents: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Held-out documents chosen by a stable hash of their text: independent of order and seed."""
    cut = int(val_fraction * 10_000)
    train, val = [], []
    for document in documents:
        bucket = int(hashlib.sha1(document.encode()).hexdigest()[:8], 16) % 10_000
        (val if bucket < cut else train).append(document)
    return train, val


def pack_blocks(documents: Sequence[str], tokenizer, seq_len: int, cache: Path):
    import datasets

    folder = Path(cache) / "blocks" / _blocks_key(documents, tokenizer, seq_len)
    if not (folder / "dataset_info.json").exists():
        with status(f"tokenizing and packing {len(documents):,} documents into blocks of {seq_len} tokens"):
            build_dir(folder, lambda tmp: _tokenize_and_pack(documents, tokenizer, seq_len).save_to_disk(str(tmp)))
    datasets.disable_progress_bars()
    return datasets.load_from_disk(str(folder)).with_format("torch")


def _blocks_key(documents: Sequence[str], tokenizer, seq_len: int) -> str:
    digest = hashlib.sha256(f"{_PACKING_RECIPE}|{seq_len}|".encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    for document in documents:
        digest.update(document.encode())
    return f"L{seq_len}-{digest.hexdigest()[:16]}"


def _tokenize_and_pack(documents: Sequence[str], tokenizer, seq_len: int):
    import datasets

    datasets.disable_progress_bars()
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [row + [eos] for row in ids]}

    def pack(batch):
        stream = [token for row in batch["ids"] for token in row]
        usable = len(stream) - len(stream) % seq_len
        return {"input_ids": [stream[i : i + seq_len] for i in range(0, usable, seq_len)]}

    table = datasets.Dataset.from_dict({"text": list(documents)})
    table = table.map(tokenize, batched=True, remove_columns=["text"])
    # One packing batch over everything: no tokens are dropped at batch boundaries.
    return table.map(pack, batched=True, batch_size=len(table), remove_columns=["ids"])


class BlockSampler:
    """Deterministic, resumable order of training blocks: sample i of the run is a pure function of i.

    Each epoch is a fresh permutation seeded by (seed, epoch), so resuming needs only the sample count.
    """

    def __init__(self, num_blocks: int, seed: int):
        self.num_blocks, self.seed = num_blocks, seed
        self._epoch, self._perm = -1, None

    def indices(self, start: int, count: int) -> list[int]:
        return [self._block(i) for i in range(start, start + count)]

    def _block(self, sample: int) -> int:
        import torch

        epoch, offset = divmod(sample, self.num_blocks)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_blocks, generator=generator).tolist()
            self._epoch = epoch
        return self._perm[offset]
