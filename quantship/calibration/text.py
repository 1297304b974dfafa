"""Raw text as sample data for a language model: a text file, one sentence a line,
tokenized by a local Hugging Face tokenizer folder (``--tokenizer DIR``) with the
``tokenizers`` package. Nothing is downloaded.

A folder holds ``tokenizer.json`` (a fast tokenizer, written by ``save_pretrained``) or,
for older BERT-style folders, ``vocab.txt`` (WordPiece; lower-cased unless
``tokenizer_config.json`` says ``do_lower_case: false``). Each line becomes one sample:
``input_ids``, ``attention_mask`` and ``token_type_ids``, for the inputs of those names
the model has. A model with a fixed sequence length gets every sentence padded or cut
to it; a model whose sequence length is dynamic gets each sentence at its own length
(calibration then covers the lengths of the data), cut at the tokenizer's maximum
(its truncation setting, else ``model_max_length``, else 512, said in a note).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantship.calibration.data import CalibrationData
from quantship.errors import DataError
from quantship.types import Feed, InputSpec

TEXT_SUFFIXES = (".txt", ".text")
# What each encoding field feeds: the input names Hugging Face exporters write.
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class TextOptions:
    """Where the tokenizer is: a folder (or its ``tokenizer.json``)."""

    tokenizer: Path

    def __post_init__(self) -> None:
        if not Path(self.tokenizer).exists():
            raise DataError(
                f"tokenizer '{self.tokenizer}' not found; give a local Hugging Face tokenizer "
                "folder (with tokenizer.json or vocab.txt)"
            )


def load_tokenizer(where: Path) -> tuple[Any, int | None, str]:
    """The tokenizer, the maximum length its folder states (None: none stated) and a
    description of what was read."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(
            "reading text needs the tokenizers package: pip install 'quantship[text]'"
        ) from None
    folder = where if where.is_dir() else where.parent
    config: dict[str, Any] = {}
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.exists():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"'{cfg_path}' is not readable JSON ({e})") from None
    stated = config.get("model_max_length")
    limit = int(stated) if isinstance(stated, int | float) and 0 < stated < 1e6 else None
    file = where if where.is_file() else folder / "tokenizer.json"
    if file.exists():
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:
            raise DataError(
                f"'{file}' is not a tokenizers file ({str(e).splitlines()[0]})"
            ) from None
        trunc = tok.truncation
        if trunc and trunc.get("max_length"):
            limit = int(trunc["max_length"])
        return tok, limit, f"'{file}'"
    vocab = folder / "vocab.txt"
    if vocab.exists():
        from tokenizers.implementations import BertWordPieceTokenizer  # type: ignore[attr-defined]

        lower = bool(config.get("do_lower_case", True))
        return BertWordPieceTokenizer(str(vocab), lowercase=lower), limit, f"'{vocab}'"
    raise DataError(
        f"tokenizer folder '{folder}' has neither tokenizer.json nor vocab.txt; save one with "
        "tokenizer.save_pretrained(DIR)"
    )


def _pad_id(tok: Any) -> int:
    pad = tok.padding
    if pad and pad.get("pad_id") is not None:
        return int(pad["pad_id"])
    for token in ("[PAD]", "<pad>"):
        tid = tok.token_to_id(token)
        if tid is not None:
            return int(tid)
    return 0


def lines_of(path: Path, role: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{role} data '{path}' is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:
        raise DataError(f"{role} data '{path}' cannot be read ({e})") from None
    lines = [s.strip() for s in text.splitlines()]
    lines = [s for s in lines if s]
    if not lines:
        raise DataError(f"{role} data '{path}' holds no sentences (one sentence a line)")
    return lines


def text_data(
    path: Path, inputs: Sequence[InputSpec], opts: TextOptions, role: str
) -> CalibrationData:
    names = [i.name for i in inputs]
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise DataError(
            f"{role} data '{path}' is text; a tokenizer gives {', '.join(FIELDS)}, but the "
            f"model also takes {', '.join(map(repr, unknown))}: save token arrays in an .npz "
            "keyed by input name instead"
        )
    if "input_ids" not in names:
        raise DataError(
            f"{role} data '{path}' is text, but the model has no input_ids input "
            f"(its inputs: {', '.join(names)})"
        )
    tok, limit, desc = load_tokenizer(Path(opts.tokenizer))
    lines = lines_of(path, role)
    ids_spec = next(i for i in inputs if i.name == "input_ids")
    if len(ids_spec.shape) != 2:
        raise DataError(
            f"{role} data '{path}' is text: input_ids must be (batch, sequence); the model's is "
            f"{ids_spec.shape_str()}"
        )
    fixed = ids_spec.shape[1]
    notes = []
    pad_id = _pad_id(tok)  # before no_padding(), which forgets the folder's own
    tok.no_padding()
    if fixed is not None:
        tok.enable_truncation(max_length=fixed)
        tok.enable_padding(length=fixed, pad_id=pad_id)
    else:
        if limit is None:
            limit = DEFAULT_MAX_LENGTH
            notes.append(
                f"{role} data '{path}': tokenizer {desc} states no maximum length; sentences "
                f"are cut at {limit} tokens"
            )
        tok.enable_truncation(max_length=limit)

    dtypes = {i.name: np.dtype(i.dtype) for i in inputs}  # int64, int32, or a bool mask

    def gen() -> Iterator[Feed]:
        for line in lines:
            enc = tok.encode(line)
            yield {
                name: np.asarray([getattr(enc, FIELDS[name])]).astype(dtypes[name])
                for name in names
            }

    return CalibrationData(
        f"'{path}' (tokenized by {desc})", role, tuple(inputs), len(lines), gen, tuple(notes)
    )


def is_text(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES
