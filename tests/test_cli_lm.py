"""A language model through the command line, as a new user types it: GPT-2 and Llama saved
with ``save_pretrained``, a text file, ``--tokenizer bytes``."""

import math
import re

import pytest
import torch
from typer.testing import CliRunner

from fxharden.cli import app
from fxharden.zoo.text import stdlib_corpus

T = pytest.importorskip("transformers")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(run) -> str:
    """The output as one line of words (rich's error boxes and line breaks removed)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", run.output).split())


def llama(folder, vocab_size=256):
    torch.manual_seed(0)
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(folder)
    return folder


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
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in run.output.splitlines()
            if line.count("│") == 3}  # the summary table: row name -> value
    assert rows["sequences"] == str(len(corpus.read_bytes()) // 32)  # the data's unit, counted by hand
    assert "images" not in rows and "chance" not in rows and rows["time"].endswith("sequences/s")
    run = invoke("budget", f"hf:{folder}", "--max-drop", "0.2", *text, "--max-images", 16, "--out", tmp_path / "b")
    assert run.exit_code == 0, run.output
    assert "transformer.wpe" in run.output and "| ops/sequence |" in run.output
    verify = next(line for line in run.output.splitlines() if line.startswith("verify: "))
    assert verify.endswith("--sigmas 1")  # one line to copy, however long


def test_a_text_checkpoint_is_swept_on_the_sequences_it_held_out(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(stdlib_corpus(6000))
    folder = llama(tmp_path / "my_llama")
    text = ["--data", corpus, "--tokenizer", "bytes", "--seq-len", 16]
    run = invoke("train", f"hf:{folder}", *text, "--batch-size", 8, "--epochs", 1, "--max-steps", 1,
                 "--out", tmp_path / "t", "--no-progress")
    assert run.exit_code == 0, run.output
    sequences = len(corpus.read_bytes()) // 16  # UTF-8 bytes, 16 per sequence
    batches = math.ceil(sequences / 8)
    held = sequences - (batches - max(1, batches // 10)) * 8  # the last 10 % of the batches
    assert f"the last {held} of {sequences} sequences" in said(run)
    run = invoke("sweep", tmp_path / "t" / "checkpoint.pt", *text, "--metric", "perplexity", "--sigmas", "0.01,1",
                 "--repeats", 1, "--out", tmp_path / "s", "--no-progress")
    assert run.exit_code == 0, run.output
    assert f"evaluating the {held} held-out sequences" in said(run)
    from fxharden import load_result

    assert load_result(tmp_path / "s").num_images == held
    corpus.write_text("changed\n" + stdlib_corpus(6000))
    run = invoke("sweep", tmp_path / "t" / "checkpoint.pt", *text, "--metric", "perplexity", "--out", tmp_path / "s2")
    assert run.exit_code == 2 and "changed since the checkpoint was trained on it" in said(run), run.output


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(gpt2, tmp_path):
    _, corpus = gpt2
    folder = llama(tmp_path / "small_llama", vocab_size=128)
    for command in (["sweep", f"hf:{folder}", "--metric", "perplexity"], ["train", f"hf:{folder}"]):
        run = invoke(*command, "--data", corpus, "--tokenizer", "bytes", "--seq-len", 16, "--out", tmp_path / "o",
                     "--no-progress")
        assert run.exit_code == 2, run.output
        words = said(run)
        assert "256 tokens" in words and "128 rows" in words and "--tokenizer FOLDER" in words, run.output


def test_text_without_a_tokenizer_and_mistyped_paths_say_what_to_do(gpt2, tmp_path):
    folder, corpus = gpt2
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    cases = [(["sweep", f"hf:{folder}"], "is a language model: text data need --tokenizer"),
             (["sweep", "lenet5", "--data", corpus], "is a file, not an image folder or CIFAR-10: text data need "
                                                      "--tokenizer: bytes"),
             (["budget", "lenet5", "--max-drop", "0.1", "--data", tmp_path / "img"],
              f"--data '{tmp_path / 'img'}' does not exist; close names in '{tmp_path}': imgs"),
             (["inspect", f"hf:{folder.parent / 'my_gtp2'}"],
              f"the folder '{folder.parent / 'my_gtp2'}' does not exist; close names in '{folder.parent}': "
              f"{folder.name}")]
    for args, message in cases:
        run = invoke(*args)
        assert run.exit_code == 2, run.output
        assert message in said(run) and "CIFAR-10 test" not in run.output and "huggingface-cli" not in run.output, \
            run.output


def test_version_and_hf_sources_in_the_help():
    import fxharden

    run = invoke("--version")
    assert run.exit_code == 0 and run.output.strip() == f"fxharden {fxharden.__version__}"
    assert "hf:FOLDER" in said(invoke("inspect", "--help"))
