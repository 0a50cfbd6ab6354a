"""deo.bench.data: the character corpus, its split and its batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deo.bench.data import CharCorpus, default_corpus_text, load_corpus

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/shakespeare_char/input.txt"


@pytest.fixture(scope="module")
def corpus() -> CharCorpus:
    return load_corpus(None)


def test_default_corpus_is_offline_and_large(corpus):
    assert corpus.name == "pydoc-topics"
    assert len(corpus.text) > 100_000
    assert corpus.text == default_corpus_text()  # deterministic: sorted key order
    assert corpus.chars == sorted(set(corpus.text))
    assert corpus.vocab_size == len(set(corpus.text))


def test_encode_decode_round_trip(corpus):
    sample = corpus.text[1000:3000]
    ids = corpus.encode(sample)
    assert ids.dtype == torch.long and ids.shape == (len(sample),)
    assert corpus.decode(ids) == sample
    assert corpus.decode(ids.tolist()) == sample
    # indices are positions in the sorted vocabulary
    assert [corpus.chars[i] for i in ids[:50].tolist()] == list(sample[:50])


def test_encode_rejects_unknown_character():
    small = CharCorpus("abcabc", "toy")
    with pytest.raises(ValueError, match="'z'"):
        small.encode("abz")


def test_split_is_first_90_percent_train(corpus):
    n = len(corpus.text)
    assert len(corpus.train) == int(0.9 * n)
    assert len(corpus.train) + len(corpus.val) == n
    assert corpus.decode(corpus.train[-20:]) == corpus.text[int(0.9 * n) - 20 : int(0.9 * n)]
    assert corpus.decode(corpus.val[:20]) == corpus.text[int(0.9 * n) : int(0.9 * n) + 20]
    assert corpus.train.dtype == corpus.val.dtype == torch.long


@pytest.mark.parametrize("split", ["train", "val"])
def test_get_batch_windows_match_raw_text(corpus, split):
    gen = torch.Generator().manual_seed(0)
    x, y = corpus.get_batch(split, batch_size=12, block_size=64, generator=gen)
    assert x.shape == y.shape == (12, 64)
    assert x.dtype == y.dtype == torch.long
    offset = 0 if split == "train" else len(corpus.train)
    for row_x, row_y in zip(x, y):
        text_x, text_y = corpus.decode(row_x), corpus.decode(row_y)
        # ground truth: each window is a contiguous piece of the split, y is x shifted by one
        start = corpus.text.find(text_x + text_y[-1], offset)
        assert start >= 0
        assert text_y == corpus.text[start + 1 : start + 65]
        assert offset <= start and start + 65 <= offset + len(corpus.split(split))


def test_get_batch_is_reproducible_and_ignores_global_rng(corpus):
    torch.manual_seed(1)
    a = corpus.get_batch("train", 8, 32, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = corpus.get_batch("train", 8, 32, torch.Generator().manual_seed(7))
    c = corpus.get_batch("train", 8, 32, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_reaches_last_window():
    # 11 tokens, 9 train; block 8 leaves exactly one window, which must end at the split's end
    toy = CharCorpus("abcdefghijk", "toy")
    x, y = toy.get_batch("train", 3, 8, torch.Generator().manual_seed(0))
    assert toy.decode(x[0]) == "abcdefgh" and toy.decode(y[0]) == "bcdefghi"
    assert torch.equal(x, x[:1].expand(3, 8))


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} not present")
def test_tiny_shakespeare_has_65_characters():
    shakespeare = load_corpus(SHAKESPEARE)
    assert shakespeare.vocab_size == 65
    assert shakespeare.name == "input"
    assert len(shakespeare.train) == int(0.9 * len(shakespeare.text))


def test_missing_file_names_path_and_flag(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt") as info:
        load_corpus(missing)
    assert "--data PATH" in str(info.value)


def test_empty_file_is_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="0 characters"):
        load_corpus(empty)


def test_file_is_read_as_utf8(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("héllo wörld — ok\n" * 20, encoding="utf-8")
    poem = load_corpus(str(path))
    assert poem.name == "poem"
    assert "—" in poem.chars and poem.vocab_size == len(set("héllo wörld — ok\n"))


def test_text_too_short_for_block_size_names_block_size():
    toy = CharCorpus("abcdefghijk", "toy")  # 9 train, 2 val tokens
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="block_size=9"):
        toy.get_batch("train", 1, 9, gen)
    with pytest.raises(ValueError, match="block_size=2"):
        toy.get_batch("val", 1, 2, gen)
    toy.get_batch("val", 1, 1, gen)  # the longest block the 2-token val split allows


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_bad_sizes_name_the_argument(corpus, bad):
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="batch_size"):
        corpus.get_batch("train", bad, 8, gen)
    with pytest.raises(ValueError, match="block_size"):
        corpus.get_batch("train", 2, bad, gen)


def test_unknown_split_lists_accepted_values(corpus):
    with pytest.raises(ValueError, match="'train', 'val'") as info:
        corpus.get_batch("test", 2, 8, torch.Generator())
    assert "'test'" in str(info.value)
