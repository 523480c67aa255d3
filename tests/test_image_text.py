"""CLIP image–text data: deterministic synthetic shapes, local folder and hub loaders, tiny CLIP learns."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from adagc_repro.data.image_text import (
    COLOURS,
    EOS_ID,
    PAD_ID,
    build_image_text_data,
    check_token_ids,
    draw_shape,
    shape_caption,
)
from adagc_repro.errors import ConfigError
from adagc_repro.models import build_model, forward_loss, model_kind

CLIP_TINY = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "conf" / "model" / "clip_tiny.yaml").read_text()
)
SYNTHETIC = {"source": "synthetic_shapes", "num_train": 512, "num_val": 64, "seed": 0}


def test_synthetic_pairs_are_deterministic_and_match_their_captions():
    a = build_image_text_data(SYNTHETIC, image_size=32, max_text_len=8)
    b = build_image_text_data(SYNTHETIC, image_size=32, max_text_len=8)
    batch_a, batch_b = a.train.batch([0, 5, 7]), b.train.batch([0, 5, 7])
    for key in batch_a:
        assert torch.equal(batch_a[key], batch_b[key])
    assert batch_a["pixel_values"].shape == (3, 3, 32, 32)
    assert not torch.equal(batch_a["pixel_values"][0], batch_a["pixel_values"][1])
    assert a.val.pairs.captions != a.train.pairs.captions[:64]  # validation indices follow training's
    for index in range(20):  # the drawn colour is the captioned colour
        size, colour, shape, generator = shape_caption(index, seed=0)
        image = (draw_shape(shape, colour, size, 32, generator) + 1) / 2
        foreground = image.amax(dim=0) > 0.3
        mean_rgb = image[:, foreground].mean(dim=1)
        assert torch.allclose(mean_rgb, torch.tensor(COLOURS[colour]), atol=0.06), (index, colour)


def test_word_tokenizer_ends_captions_with_eos_and_pads():
    data = build_image_text_data(SYNTHETIC, image_size=32, max_text_len=8)
    ids, mask = data.train.input_ids[0], data.train.attention_mask[0]
    words = data.train.pairs.captions[0].split()
    assert ids[len(words)] == EOS_ID and (ids[len(words) + 1 :] == PAD_ID).all()
    assert mask.sum() == len(words) + 1
    assert data.tokenizer.decode(ids[: len(words)]) == data.train.pairs.captions[0]
    assert data.vocab_size == 3 + 1 + 2 + 8 + 6  # specials, "a", sizes, colours, shapes


def test_image_folder_loader(tmp_path):
    from PIL import Image

    rows = []
    for i, colour in enumerate(["red", "green", "blue"] * 8):
        rgb = tuple(int(255 * c) for c in COLOURS[colour])
        Image.new("RGB", (20, 10), rgb).save(tmp_path / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "caption": f"a {colour} picture number {i}"})
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = build_image_text_data(
        {"source": "image_folder", "root": str(tmp_path), "val_fraction": 0.3}, image_size=16, max_text_len=12
    )
    assert len(data.train) + len(data.val) == 24 and len(data.val) > 0
    batch = data.train.batch(range(len(data.train)))
    assert batch["pixel_values"].shape == (len(data.train), 3, 16, 16)
    first = data.train.pairs.captions[0].split()[1]
    expected = torch.tensor(COLOURS[first]) * 2 - 1
    assert torch.allclose(batch["pixel_values"][0, :, 0, 0], expected, atol=0.02)
    (tmp_path / "img3.png").unlink()
    with pytest.raises(ConfigError, match=r"data\.root"):
        build_image_text_data(
            {"source": "image_folder", "root": str(tmp_path)}, image_size=16, max_text_len=12
        )


def test_hub_loader_fails_fast_offline():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"data\.name"):
        build_image_text_data(
            {"source": "hf", "name": "nobody/no-such-image-text-set"}, image_size=32, max_text_len=8
        )
    assert time.perf_counter() - start < 10


def test_unknown_source_key_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.num_trian"):
        build_image_text_data({**SYNTHETIC, "num_trian": 3}, image_size=32, max_text_len=8)


def test_token_id_mismatch_is_caught():
    data = build_image_text_data(SYNTHETIC, image_size=32, max_text_len=8)
    model = build_model({**CLIP_TINY, "eos_token_id": 2}, data.vocab_size, device="meta")
    with pytest.raises(ConfigError, match=r"model\.eos_token_id"):
        check_token_ids(model.config, data.tokenizer)


def test_tiny_clip_contrastive_loss_decreases():
    assert model_kind(CLIP_TINY) == "contrastive"
    data = build_image_text_data(SYNTHETIC, image_size=32, max_text_len=8)
    torch.manual_seed(0)
    model = build_model({**CLIP_TINY, "max_position_embeddings": 8}, data.vocab_size)
    check_token_ids(model.config, data.tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    val = data.val.batch(range(32))
    with torch.no_grad():
        before = forward_loss(model, val)[0].item()
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    for step in range(40):
        loss, extras = forward_loss(model, data.train.batch(order[(step * 32) % 512 :][:32].tolist()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = forward_loss(model, val)[0].item()
    assert "logit_scale" in extras
    assert before == pytest.approx(torch.log(torch.tensor(32.0)).item(), abs=0.3)
    assert after < before - 1.0, (before, after)
