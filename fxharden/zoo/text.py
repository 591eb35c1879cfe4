"""Text data for language models: a corpus file, a tokenizer, fixed-length token windows.

``text_batches(corpus, tokenizer, seq_len)`` cuts a tokenized text into non-overlapping windows
of ``seq_len`` tokens and batches them as ``(ids, ids)`` pairs: the targets of a causal language
model are its input ids (the metrics shift them by one, ``fxharden.measure.scores``), so these
batches go straight into ``fxharden.sweep(model, batches, metric="perplexity")``.

Tokenizers: ``"bytes"`` (UTF-8 bytes, a vocabulary of 256, nothing to load) or the folder of a
Hugging Face tokenizer (``tokenizer.json`` ...), loaded offline with transformers.

Training holds out the last ``TEXT_HOLDOUT`` of the windows (``split_record`` describes the
split, stored in the checkpoint); ``heldout_windows`` gives them back for evaluation, so a
checkpoint is never measured on the text it trained on. ``check_vocab`` refuses a tokenizer
with more tokens than the model's input embedding has rows (token ids past its end).

``stdlib_corpus()`` is a text available on every machine with a permissive license: the
docstrings of Python's standard library (PSF license), for examples and tests.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["ByteTokenizer", "TokenizerNotFoundError", "load_tokenizer", "text_batches", "text_windows",
           "batch_windows", "split_record", "heldout_windows", "check_vocab", "input_vocab", "tokenizer_size",
           "stdlib_corpus", "TEXT_HOLDOUT"]

TEXT_HOLDOUT = 0.1
"""Share of a text's batches (the last ones) held out when training on it."""


class TokenizerNotFoundError(FileNotFoundError):
    """A tokenizer path that holds no tokenizer (the message names what was looked for)."""


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``vocab_size`` 256, ``encode(text) -> list of ints``."""

    vocab_size = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def load_tokenizer(spec: Union[str, os.PathLike, Any]) -> Any:
    """``"bytes"``, a tokenizer object (returned as it is), or the folder of a Hugging Face
    tokenizer (loaded with ``AutoTokenizer.from_pretrained(path, local_files_only=True)``).

    Raises:
        TokenizerNotFoundError: the path does not exist or holds no tokenizer files.
        ImportError: a tokenizer folder without transformers installed.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    if str(spec) == "bytes":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise TokenizerNotFoundError(f"tokenizer {str(spec)!r}: no such folder; pass the folder of a Hugging Face "
                                     "tokenizer (with tokenizer.json or tokenizer_config.json), or 'bytes' for "
                                     "UTF-8 bytes (256 tokens)")
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
    if not any((path / f).is_file() for f in files):
        raise TokenizerNotFoundError(f"tokenizer folder {str(path)!r} holds none of {', '.join(files)}; save one "
                                     "there with tokenizer.save_pretrained(folder), or pass 'bytes'")
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # pragma: no cover - the lm extra brings it
        raise ImportError("a tokenizer folder needs transformers: pip install -e '.[lm]'") from err
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _token_ids(tokenizer: Any, text: str) -> List[int]:
    ids = tokenizer.encode(text)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def _corpus_ids(corpus: Union[str, os.PathLike], tokenizer: Any) -> Tensor:
    """The token ids of a text file (or of the text itself when ``corpus`` holds a newline)."""
    if isinstance(corpus, str) and "\n" in corpus:
        text = corpus
    else:
        path = Path(corpus).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text corpus {str(corpus)!r} does not exist; pass a UTF-8 text file")
        text = path.read_text(encoding="utf-8", errors="replace")
    return torch.tensor(_token_ids(load_tokenizer(tokenizer), text), dtype=torch.long)


def _windows(ids: Tensor, seq_len: int) -> Tensor:
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a causal LM predicts the next token), got {seq_len}")
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one sequence of {seq_len}; use a longer "
                         "text or a shorter --seq-len")
    return ids[:n * seq_len].view(n, seq_len)


def text_windows(corpus: Union[str, os.PathLike], tokenizer: Any = "bytes", seq_len: int = 128) -> Tensor:
    """The ``(n, seq_len)`` non-overlapping token windows of a text, in order (the last,
    incomplete window dropped). Arguments and errors as for ``text_batches``."""
    return _windows(_corpus_ids(corpus, tokenizer), seq_len)


def batch_windows(windows: Tensor, batch_size: int, max_sequences: Optional[int] = None) -> List[Tuple[Tensor, Tensor]]:
    """``(ids, ids)`` batches of ``batch_size`` windows (the last may be smaller), of the first
    ``max_sequences`` windows when given."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_sequences is not None:
        windows = windows[:max_sequences]
    return [(w, w) for w in windows.split(batch_size)]


def text_batches(corpus: Union[str, os.PathLike], tokenizer: Any = "bytes", seq_len: int = 128,
                 batch_size: int = 16, max_sequences: Optional[int] = None) -> List[Tuple[Tensor, Tensor]]:
    """``(ids, ids)`` batches of ``seq_len``-token windows of a text file (or of the text itself
    when ``corpus`` is a string holding a newline).

    Args:
        corpus: a UTF-8 text file, or the text.
        tokenizer: see ``load_tokenizer``.
        seq_len: tokens per sequence (>= 2: a causal LM predicts tokens 2..seq_len).
        batch_size: sequences per batch (the last batch may be smaller).
        max_sequences: keep the first this many sequences.

    Raises:
        FileNotFoundError: the corpus file does not exist.
        ValueError: ``seq_len`` < 2, or a text shorter than one sequence.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_windows(text_windows(corpus, tokenizer, seq_len), batch_size, max_sequences)


def _tokenizer_id(spec: Any) -> str:
    """How a split record names a tokenizer: ``bytes`` or the tokenizer folder's full path."""
    return "bytes" if str(spec) == "bytes" else str(Path(spec).expanduser().resolve())


def _sha256(ids: Tensor) -> str:
    return hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest()


def split_record(path: Union[str, os.PathLike], tokenizer: Union[str, os.PathLike], windows: Tensor,
                 first_heldout: int) -> Dict[str, Any]:
    """What a checkpoint stores about the text it trained on (``Checkpoint.inputs["data"]``):
    the file, the tokenizer, the windows and the first held-out one (all after it are held
    out), and a hash of their tokens, so ``heldout_windows`` can rebuild the split."""
    return {"kind": "text", "path": str(Path(path).expanduser().resolve()), "tokenizer": _tokenizer_id(tokenizer),
            "seq_len": int(windows.shape[1]), "sequences": int(len(windows)), "heldout_from": int(first_heldout),
            "tokens_sha256": _sha256(windows.flatten())}


def heldout_windows(record: Mapping[str, Any], corpus: Union[str, os.PathLike], tokenizer: Union[str, os.PathLike],
                    seq_len: int) -> Optional[Tensor]:
    """The ``seq_len`` windows of the text a checkpoint held out from training (``record``:
    its ``split_record``), when ``corpus`` is the text it trained on; ``None`` for another text
    (or a record without a split). Another ``seq_len`` cuts the held-out tokens anew.

    Raises:
        ValueError: the same text with another tokenizer, or a text that changed since
            training (the held-out part cannot be told apart any more).
    """
    if record.get("kind") != "text" or "heldout_from" not in record \
            or str(Path(corpus).expanduser().resolve()) != record.get("path"):
        return None
    if _tokenizer_id(tokenizer) != record["tokenizer"]:
        raise ValueError(f"the checkpoint was trained on {corpus} with --tokenizer {record['tokenizer']}: evaluate "
                         "with that tokenizer (its held-out sequences), or on another text")
    ids = _corpus_ids(corpus, tokenizer)
    start, trained = record["heldout_from"] * record["seq_len"], record["sequences"] * record["seq_len"]
    if len(ids) < trained or _sha256(ids[:trained]) != record["tokens_sha256"]:
        raise ValueError(f"{corpus} changed since the checkpoint was trained on it: the sequences it held out cannot "
                         "be told apart any more; evaluate on a text it never saw, or train again")
    return _windows(ids[start:trained], seq_len)


def tokenizer_size(tokenizer: Any) -> Optional[int]:
    """The number of token ids a tokenizer gives (added tokens included); ``None``: unknown."""
    if hasattr(tokenizer, "__len__"):
        return len(tokenizer)
    size = getattr(tokenizer, "vocab_size", None)
    return int(size) if size is not None else None


def input_vocab(model: Any) -> Optional[int]:
    """Rows of a Hugging Face model's input embedding (token ids ``0 .. rows - 1``); ``None``
    for a model without ``get_input_embeddings``."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    rows = getattr(emb, "num_embeddings", None)
    return int(rows) if rows is not None else None


def check_vocab(tokenizer: Any, vocab: Optional[int], label: str, windows: Optional[Tensor] = None) -> None:
    """Refuse token ids past the model's input embedding (``vocab`` rows): a tokenizer with more
    tokens than that, or ``windows`` holding such ids. Nothing is checked when ``vocab`` is
    ``None``.

    Raises:
        ValueError: naming both sizes and the fix.
    """
    if vocab is None:
        return
    size = tokenizer_size(tokenizer)
    top = int(windows.max()) + 1 if windows is not None and windows.numel() else 0
    if (size or 0) > vocab or top > vocab:
        name = "bytes (UTF-8 bytes)" if isinstance(tokenizer, ByteTokenizer) else type(tokenizer).__name__
        have = f"{size} tokens" if size is not None and size > vocab else f"token ids up to {top - 1}"
        raise ValueError(f"the tokenizer {name} gives {have}, but {label} has an input embedding of {vocab} rows "
                         f"(vocab_size {vocab}): ids >= {vocab} do not exist for it. Use the tokenizer the model was "
                         f"trained with (--tokenizer FOLDER), or a model with vocab_size >= {size or top}")


_STDLIB = ("abc", "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
           "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools", "gzip", "hashlib",
           "heapq", "html", "inspect", "io", "ipaddress", "itertools", "json", "logging", "operator", "os", "pathlib",
           "pickle", "pprint", "queue", "random", "re", "secrets", "shlex", "shutil", "socket", "statistics",
           "string", "subprocess", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid",
           "warnings", "weakref", "zipfile")


def stdlib_corpus(max_chars: Optional[int] = None) -> str:
    """The docstrings of fifty standard-library modules, their classes and functions, in a
    fixed order (the same text on every machine with the same Python)."""
    seen, parts = set(), []
    for name in _STDLIB:
        module = importlib.import_module(name)
        with warnings.catch_warnings():  # typing.io and typing.re warn when read
            warnings.simplefilter("ignore", DeprecationWarning)
            objects = [module] + [v for _, v in sorted(vars(module).items())
                                  if (inspect.isclass(v) or inspect.isfunction(v))
                                  and getattr(v, "__module__", "") == name]
            docs = [inspect.getdoc(obj) for obj in objects]
        for doc in docs:
            if doc and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    text = "\n\n".join(parts) + "\n"
    return text[:max_chars] if max_chars is not None else text
