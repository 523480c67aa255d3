"""Packing into training blocks, checked token by token on a hand-built example."""

from __future__ import annotations

from adagc_repro.data import BlockSet, shards, split_documents

WORDS = ["<eos>", "<unk>", "a", "b", "c", "d", "e", "f", "g"]


def word_tokenizer():
    """One id per word (its index in WORDS), with <eos> = 0."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


def pack(documents: list[str], seq_len: int, folder) -> BlockSet:
    """The training blocks of `documents` (a .txt, blank-line separated) through the real prepare path."""
    tokenizer = folder / "tokenizer"
    word_tokenizer().save_pretrained(str(tokenizer))
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(documents) + "\n")
    val_fraction = 0.0001  # one hash bucket in 10,000: every document below trains
    assert split_documents(documents, val_fraction)[1] == []
    data_cfg = {"source": "text_files", "name": "t", "paths": [str(corpus)], "text_key": "text",
                "tokenizer": str(tokenizer), "vocab_size": len(WORDS), "val_fraction": val_fraction}
    return BlockSet(shards.TokenSplit(shards.prepare(data_cfg, folder / "cache", workers=1), "train"), seq_len)


def test_documents_end_in_eos_and_blocks_cut_the_stream_without_padding(tmp_path):
    a, b, c, d, e, f, g, eos = 2, 3, 4, 5, 6, 7, 8, 0
    documents = ["a b", "c", "d e f g", "a"]
    # stream: a b <eos> c <eos> d e f g <eos> a <eos> (12 tokens) -> blocks of 5, the last 2 tokens dropped
    blocks = pack(documents, 5, tmp_path)
    assert len(blocks) == 2
    rows = blocks.batch([0, 1])["input_ids"].tolist()
    assert rows == [[a, b, eos, c, eos], [d, e, f, g, eos]]
    assert blocks.batch([1, 0])["input_ids"].tolist() == rows[::-1]


def test_a_document_longer_than_a_block_continues_in_the_next_block(tmp_path):
    blocks = pack(["a b c d e f g"], 4, tmp_path)
    assert blocks.batch(range(len(blocks)))["input_ids"].tolist() == [[2, 3, 4, 5], [6, 7, 8, 0]]
