"""Text data (fixed-length windows of a tokenized corpus), ``hf:`` model sources and the text
route of ``fxharden sweep``, checked against the saved model and hand-built windows."""

import pytest
import torch
from typer.testing import CliRunner

from fxharden.cli import app
from fxharden.zoo.sources import ModelSourceError, SourceKind, build_source, parse_source
from fxharden.zoo.text import ByteTokenizer, TokenizerNotFoundError, load_tokenizer, stdlib_corpus, text_batches


def test_windows_are_the_tokens_in_order(tmp_path):
    text = "abcdefghij" * 7  # 70 bytes -> 4 windows of 16, 6 bytes left over
    (tmp_path / "c.txt").write_text(text)
    batches = text_batches(tmp_path / "c.txt", "bytes", seq_len=16, batch_size=3)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 16), (1, 16)]
    ids = torch.cat([x for x, _ in batches]).flatten().tolist()
    assert bytes(ids) == text.encode()[:64]
    assert all(torch.equal(x, y) for x, y in batches)  # causal LM: the targets are the inputs


def test_bad_text_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text_batches(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="fewer than one sequence"):
        text_batches("short\n", "bytes", seq_len=64)
    with pytest.raises(TokenizerNotFoundError, match="no such folder"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerNotFoundError, match="holds none of"):
        load_tokenizer(tmp_path)
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)


def test_stdlib_corpus_is_deterministic():
    assert stdlib_corpus(5000) == stdlib_corpus(5000) and len(stdlib_corpus()) > 100_000


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder)
    return model.eval(), folder


def test_hf_source_loads_the_saved_weights(saved_llama):
    model, folder = saved_llama
    src = parse_source(f"hf:{folder}")
    assert src.kind is SourceKind.HF
    loaded = build_source(src).eval()
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_hf_source_offline_errors_name_the_cache_and_the_file(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ModelSourceError, match=r"(?s)no config\.json in the folder.*save_pretrained"):
        build_source(parse_source(f"hf:{tmp_path}"))
    with pytest.raises(ModelSourceError, match="Hugging Face cache"):
        build_source(parse_source("hf:no-such-model-here"))


def test_cli_sweep_on_text_gives_perplexity_per_layer(saved_llama, tmp_path):
    _, folder = saved_llama
    (tmp_path / "corpus.txt").write_text(stdlib_corpus(8000))
    run = CliRunner().invoke(app, ["sweep", f"hf:{folder}", "--data", str(tmp_path / "corpus.txt"), "--tokenizer",
                                   "bytes", "--seq-len", "32", "--metric", "perplexity", "--sigmas", "0.01,0.5",
                                   "--repeats", "1", "--out", str(tmp_path / "s"), "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "perplexity: clean" in run.output and "tokenizer bytes" in run.output
    from fxharden import load_result

    result = load_result(tmp_path / "s")
    assert result.metric == "perplexity" and "model.layers.1.mlp.down_proj" in result.sites


def test_train_on_text_lowers_the_next_token_loss_and_checkpoints_reload(saved_llama, tmp_path):
    """fxharden.train on (ids, ids) batches: next-token cross-entropy (compared with the model's
    own loss on a batch), a checkpoint that rebuilds the exported graph with equal logits."""
    import fxharden
    from fxharden import TrainConfig, load_checkpoint, train
    from fxharden.training.train import loss_and_hits
    from fxharden.zoo.models import load_model

    _, folder = saved_llama
    lm = load_model(f"hf:{folder}")
    batches = text_batches(stdlib_corpus(40000), "bytes", seq_len=32, batch_size=16)
    x = batches[0][0]
    with torch.no_grad():
        ours, hits, count = loss_and_hits(lm.model(input_ids=x), x)
        assert torch.allclose(ours, lm.model(input_ids=x, labels=x).loss, atol=1e-5)  # HF's own shifted loss
        assert int(count) == x.numel() - len(x)
    result = train(lm.model, batches[:-2], batches[-2:], TrainConfig(epochs=1, lr=3e-3, train_sigma=0.05),
                   tmp_path, arch=f"hf:{folder}", arch_kwargs=lm.arch_kwargs)
    assert fxharden.harden_report(result.model).frontend == "export"
    first, last = result.history[0], result.history[-1]
    assert last.loss < 5.0 and result.test_accuracy > 1 / 256 * 5  # far better than a uniform guess
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert fxharden.harden_report(ck.model).frontend == "export"
    with torch.no_grad():
        assert torch.equal(ck.model.eval()(input_ids=x).logits, result.model.eval()(input_ids=x).logits)


def test_cli_train_on_text_then_sweep_its_checkpoint(saved_llama, tmp_path):
    _, folder = saved_llama
    (tmp_path / "corpus.txt").write_text(stdlib_corpus(12000))
    common = ["--data", str(tmp_path / "corpus.txt"), "--tokenizer", "bytes", "--seq-len", "32"]
    run = CliRunner().invoke(app, ["train", f"hf:{folder}", *common, "--batch-size", "8", "--train-sigma", "0.05",
                                   "--out", str(tmp_path / "t"), "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "held-out token accuracy" in run.output and "--metric perplexity" in run.output
    run = CliRunner().invoke(app, ["sweep", str(tmp_path / "t" / "checkpoint.pt"), *common, "--metric", "perplexity",
                                   "--sigmas", "0.01,1", "--repeats", "1", "--out", str(tmp_path / "s"),
                                   "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "perplexity: clean" in run.output


def test_cli_inspect_hf_shows_the_export_graph(saved_llama):
    _, folder = saved_llama
    run = CliRunner().invoke(app, ["inspect", f"hf:{folder}"])
    assert run.exit_code == 0, run.output
    assert "model.layers.1.mlp.down_proj" in run.output and "graph: torch.export" in run.output
    assert "preprocessing" not in run.output and "saved with the model" in run.output


def test_eager_attention_puts_sites_on_scores_softmax_and_values():
    """With attn_implementation="eager" the attention is tensor code: its two matmuls and the
    softmax are sites (matmuls optional: SiteKind.MATMUL added), and noise there moves the logits."""
    T = pytest.importorskip("transformers")
    import fxharden
    from fxharden import HardenConfig, NoiseConfig, SiteKind
    from fxharden.core.config import DEFAULT_NOISE_KINDS

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)
    cfg._attn_implementation = "eager"
    model = T.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    config = HardenConfig(quant=None, noise=NoiseConfig(kinds=DEFAULT_NOISE_KINDS | {SiteKind.MATMUL}))
    hm = fxharden.harden(model, config=config, example_inputs={"input_ids": ids})
    sites = {s.name: s for s in fxharden.harden_report(hm).sites}
    attn = [n for n in sites if n.startswith("model.layers.0.self_attn.")]
    assert [sites[n].kind for n in attn if sites[n].kind == "matmul"] == ["matmul", "matmul"], attn
    assert any(sites[n].op == "aten._softmax" or sites[n].op == "aten.softmax" for n in attn), attn
    scores = next(n for n in attn if sites[n].kind == "matmul")
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        assert torch.equal(hm(input_ids=ids).logits, clean)
        fxharden.set_noise(hm, 0.5, sites=[scores])
        assert not torch.allclose(hm(input_ids=ids).logits, clean, atol=1e-4)


def test_cli_budget_on_text_with_perplexity(saved_llama, tmp_path):
    """A budget on a language model: the drop is in perplexity's fit scale, and the verified
    allocation stays within it."""
    import json

    _, folder = saved_llama
    (tmp_path / "corpus.txt").write_text(stdlib_corpus(8000))
    run = CliRunner().invoke(app, ["budget", f"hf:{folder}", "--max-drop", "0.2", "--data", str(tmp_path / "corpus.txt"),
                                   "--tokenizer", "bytes", "--seq-len", "32", "--metric", "perplexity", "--repeats", "1",
                                   "--max-images", "32", "--out", str(tmp_path / "b"), "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "perplexity score (fit scale" in run.output and "--metric perplexity" in run.output
    saved = json.loads((tmp_path / "b" / "budget.json").read_text())
    assert saved["metric"] == "perplexity" and saved["drop"] <= 0.2


def test_hf_source_keeps_a_saved_sequence_classifier(tmp_path):
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=4,
                                                         num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    loaded = build_source(parse_source(f"hf:{tmp_path}")).eval()
    assert type(loaded).__name__ == "BertForSequenceClassification"
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
