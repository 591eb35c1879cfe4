"""A language model through the command line, as a new user types it: GPT-2 and Llama saved
with ``save_pretrained``, a text file, ``--tokenizer bytes``."""

import pytest
import torch
from typer.testing import CliRunner

from fxharden.cli import app
from fxharden.zoo.text import stdlib_corpus

T = pytest.importorskip("transformers")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A GPT-2 (position embedding looked up on position ids the batch shares) and a corpus."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("my_gpt2")
    T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=128)) \
        .save_pretrained(folder)
    corpus = folder.parent / "corpus.txt"
    corpus.write_text(stdlib_corpus(6000))
    return folder, corpus


def test_gpt2_sweeps_and_budgets_with_the_default_batched_points(gpt2, tmp_path):
    folder, corpus = gpt2
    text = ["--data", corpus, "--tokenizer", "bytes", "--seq-len", 32, "--metric", "perplexity", "--repeats", 1,
            "--no-progress"]
    run = invoke("sweep", f"hf:{folder}", *text, "--sigmas", "0.01,0.5", "--out", tmp_path / "s")
    assert run.exit_code == 0, run.output
    from fxharden import load_result

    result = load_result(tmp_path / "s")
    assert result.config["points_per_forward"] > 1  # the sigma points ran as batch groups
    run = invoke("budget", f"hf:{folder}", "--max-drop", "0.2", *text, "--max-images", 16, "--out", tmp_path / "b")
    assert run.exit_code == 0, run.output
    assert "transformer.wpe" in run.output
    verify = next(line for line in run.output.splitlines() if line.startswith("verify: "))
    assert verify.endswith("--sigmas 1")  # one line to copy, however long
