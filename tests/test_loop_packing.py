"""Packing into training blocks, checked token by token on a hand-built example."""

from __future__ import annotations

from adagc_repro.data import BlockSet, pack_blocks

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


def test_documents_end_in_eos_and_blocks_cut_the_stream_without_padding(tmp_path):
    a, b, c, d, e, f, g, eos = 2, 3, 4, 5, 6, 7, 8, 0
    documents = ["a b", "c", "d e f g", "a"]
    # stream: a b <eos> c <eos> d e f g <eos> a <eos> (12 tokens) -> blocks of 5, the last 2 tokens dropped
    blocks = BlockSet(pack_blocks(documents, word_tokenizer(), seq_len=5, cache=tmp_path))
    assert len(blocks) == 2
    rows = blocks.batch([0, 1])["input_ids"].tolist()
    assert rows == [[a, b, eos, c, eos], [d, e, f, g, eos]]
    assert blocks.batch([1, 0])["input_ids"].tolist() == rows[::-1]


def test_a_document_longer_than_a_block_continues_in_the_next_block(tmp_path):
    blocks = BlockSet(pack_blocks(["a b c d e f g"], word_tokenizer(), seq_len=4, cache=tmp_path))
    assert blocks.batch(range(len(blocks)))["input_ids"].tolist() == [[2, 3, 4, 5], [6, 7, 8, 0]]
