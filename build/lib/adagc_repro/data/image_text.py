"""Image–text pairs for CLIP: a learnable synthetic set of drawn shapes, a local folder, or a hub data set.

`build_image_text_data(data_cfg, image_size=.., max_text_len=..)` returns train and validation sets
whose `batch(indices)` gives `{"input_ids", "attention_mask", "pixel_values"}`, the batch that
`adagc_repro.models.forward_loss` takes for CLIP. Pixels are float32 in [-1, 1], shape [B, 3, S, S].

Sources (`data.source`):
- `synthetic_shapes`: "a small red circle", "a large cyan cross", ... drawn with torch alone (no image
  library), every sample a pure function of (seed, index); fully offline and learnable in minutes on CPU.
- `image_folder`: `<root>/captions.jsonl` with rows `{"image": "<file relative to root>", "caption": ..}`.
- `hf`: a hub data set with an image column and a caption column (fails fast offline when not cached).

Captions are tokenised by a word-level tokenizer built from the training captions (a transformers
fast tokenizer, so it saves with the model) or by a given tokenizer (`tokenizer: <path or hub id>`).
The CLIP text tower pools at the first EOS token, so the model's `eos_token_id` must equal the
tokenizer's: `check_token_ids` raises a ConfigError when they differ.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adagc_repro.data.hub import offline_guard
from adagc_repro.errors import ConfigError
from adagc_repro.registry import Registry

IMAGE_TEXT_SOURCES = Registry("image-text source", "data", selector="source")
COMMON_KEYS = ("source", "tokenizer", "vocab_size")
# Word tokenizer ids: the `clip_tiny` preset uses pad 0 and eos 1 (eos 2 would switch transformers'
# CLIP to its legacy "pool at the largest id" rule).
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
PAD_ID, EOS_ID = 0, 1

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.9),
    "cyan": (0.1, 0.9, 0.9),
    "white": (0.95, 0.95, 0.95),
    "orange": (1.0, 0.55, 0.0),
}
SIZES = {"small": (0.25, 0.35), "large": (0.5, 0.7)}  # half-width range in [-1, 1] image coordinates


# ----------------------------------------------------------------------------------------------- sources


@dataclass
class PairSource:
    """Train and validation pairs before tokenisation; `image(i)` returns a [3, S, S] tensor in [-1, 1]."""

    captions: list[str]
    load_image: Any  # Callable[[int], Tensor]

    def __len__(self) -> int:
        return len(self.captions)


def shape_caption(index: int, seed: int) -> tuple[str, str, str, Any]:
    """(size, colour, shape, generator) of synthetic sample `index`: a pure function of (seed, index)."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    picks = torch.randint(0, 1 << 30, (3,), generator=generator).tolist()
    size = list(SIZES)[picks[0] % len(SIZES)]
    colour = list(COLOURS)[picks[1] % len(COLOURS)]
    shape = SHAPES[picks[2] % len(SHAPES)]
    return size, colour, shape, generator


def draw_shape(shape: str, colour: str, size: str, image_size: int, generator) -> Any:
    """A shape of one colour on dark noise, at a random position, size and colour jitter."""
    import torch

    low, high = SIZES[size]
    radius = low + (high - low) * torch.rand((), generator=generator).item()
    room = max(0.0, 0.95 - radius)
    cx, cy = ((torch.rand(2, generator=generator) * 2 - 1) * room).tolist()
    axis = torch.linspace(-1, 1, image_size)
    y, x = torch.meshgrid(-axis, axis, indexing="ij")  # y points up
    x, y = x - cx, y - cy
    dist = torch.sqrt(x * x + y * y)
    masks = {
        "circle": dist <= radius,
        "square": torch.maximum(x.abs(), y.abs()) <= 0.85 * radius,
        "triangle": (y >= -radius) & (x.abs() <= (radius - y) / 2),
        "diamond": x.abs() + y.abs() <= radius,
        "cross": ((x.abs() <= radius / 3) & (y.abs() <= radius))
        | ((y.abs() <= radius / 3) & (x.abs() <= radius)),
        "ring": (dist <= radius) & (dist >= 0.6 * radius),
    }
    rgb = torch.tensor(COLOURS[colour]) + 0.08 * (torch.rand(3, generator=generator) - 0.5)
    background = 0.1 + 0.05 * torch.rand(3, image_size, image_size, generator=generator)
    image = torch.where(masks[shape], rgb.clamp(0, 1)[:, None, None], background)
    return image * 2 - 1


@IMAGE_TEXT_SOURCES.register("synthetic_shapes")
def synthetic_shapes(
    *,
    image_size: int,
    num_train: int = 20_000,
    num_val: int = 512,
    seed: int = 0,
    name: str = "synthetic_shapes",
) -> tuple[PairSource, PairSource]:
    """Captions "a {size} {colour} {shape}" (2 × 8 × 6 = 96 kinds); validation indices follow training's."""

    def split(start: int, count: int) -> PairSource:
        indices = range(start, start + count)
        captions = [" ".join(("a", *shape_caption(i, seed)[:3])) for i in indices]

        def load(k: int):
            size, colour, shape, generator = shape_caption(start + k, seed)
            return draw_shape(shape, colour, size, image_size, generator)

        return PairSource(captions, load)

    return split(0, num_train), split(num_train, num_val)


def _stable_val(key: str, val_fraction: float) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10_000 < int(val_fraction * 10_000)


def _pil_to_tensor(image, image_size: int):
    """An RGB PIL image resized to a square and scaled to [-1, 1]."""
    import torch

    rgb = image.convert("RGB").resize((image_size, image_size))
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


def _split_rows(rows: list[tuple[str, Any]], load_one, val_fraction: float) -> tuple[PairSource, PairSource]:
    """rows: (caption, image handle); held-out rows chosen by a stable hash of caption and handle."""
    parts: dict[bool, list[tuple[str, Any]]] = {False: [], True: []}
    for caption, handle in rows:
        parts[_stable_val(f"{handle}|{caption}", val_fraction)].append((caption, handle))
    if not parts[True] or not parts[False]:
        raise ConfigError("data.val_fraction", f"cannot split {len(rows)} pairs into train and validation")

    def source(part):
        return PairSource([c for c, _ in part], lambda k: load_one(part[k][1]))

    return source(parts[False]), source(parts[True])


@IMAGE_TEXT_SOURCES.register("image_folder")
def image_folder(
    *,
    image_size: int,
    root: str,
    val_fraction: float = 0.05,
    image_key: str = "image",
    caption_key: str = "caption",
    name: str = "image_folder",
) -> tuple[PairSource, PairSource]:
    from PIL import Image

    folder = Path(root).expanduser()
    index = folder / "captions.jsonl"
    if not index.is_file():
        raise ConfigError("data.root", f"'{index}' not found (one JSON object per line: image, caption)")
    rows = []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if image_key not in row or caption_key not in row:
            raise ConfigError(
                "data.image_key", f"line {number} of '{index}' lacks '{image_key}' or '{caption_key}'"
            )
        if not (folder / row[image_key]).is_file():
            raise ConfigError(
                "data.root", f"image '{row[image_key]}' (line {number}) not found under '{folder}'"
            )
        rows.append((str(row[caption_key]), row[image_key]))

    def load(relative: str):
        with Image.open(folder / relative) as image:
            return _pil_to_tensor(image, image_size)

    return _split_rows(rows, load, val_fraction)


@IMAGE_TEXT_SOURCES.register("hf")
def hf(
    *,
    image_size: int,
    name: str,
    config: str | None = None,
    split: str = "train",
    image_key: str = "image",
    caption_key: str = "caption",
    max_samples: int = 100_000,
    val_fraction: float = 0.01,
) -> tuple[PairSource, PairSource]:
    import datasets

    with offline_guard("data.name", name):
        table = datasets.load_dataset(name, config, split=split)
    for key, column in (("data.image_key", image_key), ("data.caption_key", caption_key)):
        if column not in table.column_names:
            raise ConfigError(key, f"'{column}' is not a column of '{name}'", table.column_names)
    table = table.select(range(min(max_samples, len(table))))
    captions = table[caption_key]
    rows = [(str(c[0] if isinstance(c, list) else c), i) for i, c in enumerate(captions)]
    return _split_rows(rows, lambda i: _pil_to_tensor(table[int(i)][image_key], image_size), val_fraction)


# --------------------------------------------------------------------------------------------- tokenizer


def word_tokenizer(captions: Sequence[str], vocab_size: int):
    """Lower-cased word-level fast tokenizer: pad 0, eos 1, unk 2, then the most frequent words."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Lowercase()
    splitter = pre_tokenizers.Whitespace()
    counts = Counter(
        word
        for caption in captions
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(caption))
    )
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][
        : vocab_size - len(SPECIAL_TOKENS)
    ]
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer, backend.pre_tokenizer = normalizer, splitter
    backend.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=512,
    )


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    with offline_guard("data.tokenizer", spec):
        return AutoTokenizer.from_pretrained(spec)


def check_token_ids(model_config, tokenizer) -> None:
    """The text tower pools at `eos_token_id`: it must be the tokenizer's EOS (and fit the vocabulary)."""
    text = model_config.text_config
    if text.eos_token_id != tokenizer.eos_token_id:
        raise ConfigError(
            "model.eos_token_id",
            f"is {text.eos_token_id} but the caption tokenizer's EOS is {tokenizer.eos_token_id}",
        )
    if len(tokenizer) > text.vocab_size:
        raise ConfigError(
            "model.vocab_size", f"{text.vocab_size} is smaller than the tokenizer's {len(tokenizer)}"
        )


# -------------------------------------------------------------------------------------------------- sets


class ImageTextSet:
    """Pairs with tokenised captions; images are drawn or loaded when a batch asks for them."""

    def __init__(self, pairs: PairSource, tokenizer, max_text_len: int):
        encoded = tokenizer(
            pairs.captions,
            padding="max_length",
            truncation=True,
            max_length=max_text_len,
            return_tensors="pt",
        )
        self.pairs = pairs
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        import torch

        index = torch.as_tensor(list(indices), dtype=torch.long)
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "pixel_values": torch.stack([self.pairs.load_image(int(i)) for i in index]),
        }


@dataclass
class ImageTextData:
    train: ImageTextSet
    val: ImageTextSet
    tokenizer: Any

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def build_image_text_data(
    data_cfg: Mapping[str, Any], *, image_size: int, max_text_len: int
) -> ImageTextData:
    """Train/val image–text sets for `data_cfg` (`source` + that source's keys + tokenizer/vocab_size)."""
    data = dict(data_cfg)
    source_kwargs = {k: v for k, v in data.items() if k not in COMMON_KEYS}
    train_pairs, val_pairs = IMAGE_TEXT_SOURCES.build(
        data.get("source"), image_size=image_size, **source_kwargs
    )
    spec = data.get("tokenizer")
    tokenizer = (
        load_tokenizer(spec)
        if spec
        else word_tokenizer(train_pairs.captions, int(data.get("vocab_size", 1024)))
    )
    return ImageTextData(
        train=ImageTextSet(train_pairs, tokenizer, max_text_len),
        val=ImageTextSet(val_pairs, tokenizer, max_text_len),
        tokenizer=tokenizer,
    )
