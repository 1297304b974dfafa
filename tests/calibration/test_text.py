"""Text as sample data: a file of sentences tokenized by a local tokenizer folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))

pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")

import families

from quantship.calibration.sources import open_data
from quantship.calibration.text import TextOptions
from quantship.errors import DataError
from quantship.exporter.load import InputSpec

BERT_INPUTS = [InputSpec(n, (None, None), "int64") for n in families.TEXT_INPUTS]


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    return families.save_tokenizer(tmp_path / "tok", families.sentences(200, 0))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(families.sentences(12, 1)) + "\n\n", encoding="utf-8")
    return path


def test_each_sentence_is_one_sample_at_its_own_length(tokenizer: Path, text_file: Path) -> None:
    data = open_data(text_file, BERT_INPUTS, tokens=TextOptions(tokenizer))
    feeds = list(data.samples())
    assert data.num_samples == len(feeds) == 12  # the blank line is not a sentence
    lengths = {f["input_ids"].shape[1] for f in feeds}
    assert len(lengths) > 3  # dynamic sequence: no padding
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    first = text_file.read_text(encoding="utf-8").splitlines()[0]
    enc = tok.encode(first)
    np.testing.assert_array_equal(feeds[0]["input_ids"][0], enc.ids)
    assert feeds[0]["input_ids"][0, 0] == tok.token_to_id("[CLS]")
    assert feeds[0]["input_ids"][0, -1] == tok.token_to_id("[SEP]")
    for f in feeds:
        assert f["input_ids"].dtype == np.int64
        assert f["attention_mask"].all() and not f["token_type_ids"].any()


def test_fixed_length_model_gets_padded_and_cut_sentences(tokenizer: Path, text_file: Path) -> None:
    inputs = [
        InputSpec("input_ids", (1, 10), "int64"),
        InputSpec("attention_mask", (1, 10), "int32"),
    ]
    feeds = list(open_data(text_file, inputs, tokens=TextOptions(tokenizer)).samples())
    assert {f["input_ids"].shape for f in feeds} == {(1, 10)}
    assert feeds[0]["attention_mask"].dtype == np.int32
    masks = np.concatenate([f["attention_mask"] for f in feeds])
    assert (masks == 0).any() and (masks.sum(1) == 10).any()  # padded ones and cut ones
    pad = feeds[int(np.argmin(masks.sum(1)))]
    assert (pad["input_ids"][pad["attention_mask"] == 0] == 0).all()  # [PAD] is id 0


def test_vocab_txt_folder(tmp_path: Path, tokenizer: Path, text_file: Path) -> None:
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    folder = tmp_path / "old-style"
    folder.mkdir()
    words = sorted(vocab, key=vocab.get)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 8}')
    data = open_data(text_file, BERT_INPUTS, tokens=TextOptions(folder))
    feeds = list(data.samples())
    assert max(f["input_ids"].shape[1] for f in feeds) == 8  # cut at model_max_length
    assert feeds[0]["input_ids"][0, 0] == vocab["[CLS]"]


def test_text_errors_say_what_to_do(tmp_path: Path, tokenizer: Path, text_file: Path) -> None:
    with pytest.raises(DataError, match="--tokenizer DIR"):
        open_data(text_file, BERT_INPUTS)
    with pytest.raises(DataError, match="not found"):
        TextOptions(tmp_path / "missing")
    with pytest.raises(DataError, match=r"neither tokenizer\.json nor vocab\.txt"):
        open_data(text_file, BERT_INPUTS, tokens=TextOptions(tmp_path))
    odd = [*BERT_INPUTS, InputSpec("pixel_values", (None, 3), "float32")]
    with pytest.raises(DataError, match="'pixel_values'"):
        open_data(text_file, odd, tokens=TextOptions(tokenizer))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="holds no sentences"):
        open_data(empty, BERT_INPUTS, tokens=TextOptions(tokenizer))
