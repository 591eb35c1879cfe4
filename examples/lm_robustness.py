"""A small language model on noisy hardware: μ on perplexity, per block, and after noisy fine-tuning.

What it shows: a Hugging Face causal LM (a small Llama, random init) is trained for about a
minute on the CPU on a text every Python has (the standard library's docstrings, PSF license, as
UTF-8 bytes). torch.fx cannot trace it; ``fxharden`` captures it with torch.export (the first
batch is the example input) and puts noise at every projection, MLP and activation of every
block. Then

1. a global sweep measures μ on perplexity: the σ at which the perplexity has risen half way
   (on the log scale) from its clean value to the floor of a uniform guess (256 tokens);
2. a per-layer sweep (noise at one site at a time) gives the sensitivity map of its blocks;
3. a short noisy fine-tune (σ_train at every site, the hardened model in a plain PyTorch loop)
   and the global sweep again: μ after.

The same from the shell, for a model saved with ``save_pretrained``: ``fxharden sweep
hf:FOLDER --data corpus.txt --tokenizer bytes --seq-len 64 --metric perplexity``.

Run: ``python examples/lm_robustness.py [OUT_DIR]`` (default ``example_lm``). Expected output:
``trained 2000 steps in N s: clean perplexity x.xx``, ``mu (perplexity) = ...``, one line per site
``model.layers.0.self_attn.q_proj: mu = ...``, ``noisy fine-tune (sigma_train 0.1, 300 steps):
mu (perplexity) = ...`` (``fit.quote()``: μ only when the fit is ok, else a marked crossing, a
lower bound or ``-``, with the fit's status). Writes ``corpus.txt`` and each sweep's results.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fxharden
from fxharden import SweepMode, harden, set_noise, sweep
from fxharden.measure.sensitivity import sensitivity
from fxharden.zoo.text import ByteTokenizer, stdlib_corpus, text_batches

SEQ_LEN, BATCH, TRAIN_STEPS, FINETUNE_STEPS, TRAIN_SIGMA = 64, 16, 2000, 300, 0.1
SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
LAYER_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # one site alone tolerates more noise


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def _fit(model, batches, steps: int, lr: float) -> float:
    """``steps`` of AdamW on next-token loss; ``model`` is a plain or a hardened model (noise as
    set). Returns the seconds taken."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        ids = batches[step % len(batches)][0]
        loss = _lm_loss(model(input_ids=ids).logits, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(out: Path) -> None:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.txt").write_text(stdlib_corpus(), encoding="utf-8")
    batches = text_batches(out / "corpus.txt", ByteTokenizer(), SEQ_LEN, BATCH)
    train_batches, eval_batches = batches[:-8], batches[-8:]  # the last 128 sequences are held out
    model = LlamaForCausalLM(LlamaConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=SEQ_LEN))
    seconds = _fit(model, train_batches, TRAIN_STEPS, lr=3e-3)
    model.eval()

    before = sweep(model, eval_batches, metric="perplexity", sigmas=SIGMAS, repeats=2, out=out / "sweep_before")
    print(f"trained {TRAIN_STEPS} steps in {seconds:.0f} s: clean perplexity {before.metric_info['clean_values'][0]:.2f}")
    print(f"mu (perplexity) = {before.fit.quote().text(3)}")

    per_layer = sweep(model, eval_batches, metric="perplexity", sigmas=LAYER_SIGMAS, repeats=1, mode=SweepMode.PER_LAYER,
                      out=out / "sweep_per_layer")
    for row in sensitivity(per_layer):
        print(f"{row.site}: mu = {per_layer.per_site[row.site].quote().text(3)}")

    hm = harden(model, example_inputs={"input_ids": eval_batches[0][0]})
    set_noise(hm, TRAIN_SIGMA)
    _fit(hm, train_batches, FINETUNE_STEPS, lr=1e-3)
    set_noise(hm, 0.0)
    after = sweep(hm.eval(), eval_batches, metric="perplexity", sigmas=SIGMAS, repeats=2, out=out / "sweep_after")
    print(f"noisy fine-tune (sigma_train {TRAIN_SIGMA}, {FINETUNE_STEPS} steps): "
          f"mu (perplexity) = {after.fit.quote().text(3)}")
    print(f"sites: {len(fxharden.noise_sites(hm))} ({fxharden.harden_report(hm).frontend} frontend)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_lm"))
