"""Text data for language models: a corpus file, a tokenizer, fixed-length token windows.

``text_batches(corpus, tokenizer, seq_len)`` cuts a tokenized text into non-overlapping windows
of ``seq_len`` tokens and batches them as ``(ids, ids)`` pairs: the targets of a causal language
model are its input ids (the metrics shift them by one, ``fxharden.measure.scores``), so these
batches go straight into ``fxharden.sweep(model, batches, metric="perplexity")``.

Tokenizers: ``"bytes"`` (UTF-8 bytes, a vocabulary of 256, nothing to load) or the folder of a
Hugging Face tokenizer (``tokenizer.json`` ...), loaded offline with transformers.

``stdlib_corpus()`` is a text available on every machine with a permissive license: the
docstrings of Python's standard library (PSF license), for examples and tests.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["ByteTokenizer", "TokenizerNotFoundError", "load_tokenizer", "text_batches", "stdlib_corpus"]


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
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a causal LM predicts the next token), got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(corpus, str) and "\n" in corpus:
        text = corpus
    else:
        path = Path(corpus).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text corpus {str(corpus)!r} does not exist; pass a UTF-8 text file")
        text = path.read_text(encoding="utf-8", errors="replace")
    ids = torch.tensor(_token_ids(load_tokenizer(tokenizer), text), dtype=torch.long)
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one sequence of {seq_len}; use a longer "
                         "text or a shorter --seq-len")
    windows = ids[:n * seq_len].view(n, seq_len)
    return [(w, w) for w in windows.split(batch_size)]


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
