"""``fxharden train``: QAT and noisy training with checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..training.options import Augment, Precision
from ..zoo.options import OnCorrupt, Optimizer
from ._app import (_D, _M, _Q, HARDWARE_HELP, Device, Split, app, check_data, data_options, describe_preprocess,
                   harden_options, hardware_options, model_options, resolve_device, show, styled, user_errors)


@app.command("train")
def train_command(
    model: str = typer.Argument(..., help="Model source: lenet5, vgg11, resnet18, timm:NAME[.TAG], "
                                "torchvision:NAME, package.module:factory, hf:FOLDER."),
    pretrained: bool = _M["pretrained"],
    weights: Optional[str] = _M["weights"],
    num_classes: Optional[int] = _M["num_classes"],
    model_arg: Optional[List[str]] = _M["model_arg"],
    bits: Optional[int] = typer.Option(None, min=2, max=16, help="QAT: quantize weights and activations to this "
                                       "many bits. Default: fp32."),
    scale: Optional[float] = _Q["scale"],
    dynamic: bool = _Q["dynamic"],
    train_sigma: Optional[float] = typer.Option(None, min=0.0, help="Noisy training: noise strength at every noise "
                                                "site while training (0: off). Default: the --hardware's activation "
                                                "noise σ where it sets one (aihwkit-inference: 0.04), else 0."),
    ramp_epochs: int = typer.Option(0, min=0, help="Grow the training noise linearly from 0 over this many epochs."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Default: the model recipe's CPU budget (lenet5: 10)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate. Default: the paper's for the model and precision."),
    batch_size: int = typer.Option(128, min=1, help="Training batch size."),
    optimizer: Optional[Optimizer] = typer.Option(None, help="Default: the model recipe's (Adam)."),
    seed: int = typer.Option(0, help="Seeds the initial weights, the shuffling and the training noise."),
    device: Device = typer.Option(Device.AUTO, help="Where to run."),
    precision: Precision = typer.Option(Precision.AUTO, help="Arithmetic: auto = bf16 autocast on CUDA, fp32 "
                                        "elsewhere; fp16 needs CUDA. Quantizers and noise compute in float32."),
    augment: Augment = typer.Option(Augment.NONE, help="Data augmentation, on the device: none (the paper), or "
                                    "random crop (4 px padding) + horizontal flip."),
    data: Optional[Path] = typer.Option(None, help="CIFAR-10 folder, or an image folder (with train/ and val/ "
                                        "subfolders, or one folder of classes: 20% held out). Default: $FXHARDEN_DATA."),
    download: bool = _D["download"],
    synthetic: bool = _D["synthetic"],
    input_size: Optional[int] = _D["input_size"],
    mean: Optional[str] = _D["mean"],
    std: Optional[str] = _D["std"],
    crop_pct: Optional[float] = _D["crop_pct"],
    on_corrupt: OnCorrupt = _D["on_corrupt"],
    workers: Optional[int] = _D["workers"],
    train_images: Optional[int] = typer.Option(None, min=1, help="Train on the first N training images only."),
    test_images: Optional[int] = typer.Option(None, min=1, help="Evaluate on the first N test images only."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after this many optimizer steps."),
    out: Path = typer.Option(Path("runs/train"), help="Output directory: checkpoint.pt (every epoch) and "
                             "train_log.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    tokenizer: Optional[str] = _D["tokenizer"],
    seq_len: int = _D["seq_len"],
    hardware: Optional[str] = typer.Option(None, "--hardware", help=HARDWARE_HELP + " Its weight noise is drawn "
                                           "afresh in every training step; its activation noise σ is the default "
                                           "--train-sigma."),
) -> None:
    """Train a model with QAT and/or noisy training; checkpoints carry the harden config."""
    import torch

    from ..core.config import HardenConfig
    from ..core.harden import harden
    from ..zoo.data import DatasetKind, load_cifar10, load_splits
    from ..zoo.inputs import check_first_forward, effective_preprocess, inputs_record, load_with_data, resolve_splits
    from ..zoo.recipes import training_defaults
    from ..training.train import NoiseSchedule, TrainConfig, train

    with user_errors():
        harden_config = hardware_options(hardware, harden_options(bits, scale, dynamic) or HardenConfig(quant=None))
        if train_sigma is None:  # training with the hardware: its activation noise, as it will run
            train_sigma = harden_config.noise.sigma if hardware is not None else 0.0
        d = training_defaults(model, bits is not None)
        config = TrainConfig(
            epochs=epochs or d.epochs, batch_size=batch_size, lr=d.lr if lr is None else lr, optimizer=optimizer or d.optimizer,
            seed=seed, device=resolve_device(device), train_sigma=NoiseSchedule(train_sigma, ramp_epochs),
            max_steps=max_steps, precision=precision, augment=augment)
        check_data([model], None if synthetic else data, tokenizer, download)
        if tokenizer is not None:
            _train_text(model, model_options(pretrained, weights, num_classes, model_arg), harden_config, config,
                        data, tokenizer, seq_len, batch_size, seed, out, resume, progress, bits, train_sigma)
            return
        if synthetic and (data is not None or download):
            raise typer.BadParameter("--synthetic generates its own data; leave out --data/--download")
        if download:
            load_cifar10("train", data, download=True)
        dopts = data_options(data, Split.TEST, False, None, input_size, mean, std, crop_pct, on_corrupt, workers)

        split, used = {}, {}

        def splits(preprocess):
            used["preprocess"] = preprocess
            if synthetic:
                split["kind"] = "synthetic"
                return load_splits(DatasetKind.SYNTHETIC, train_images=train_images, test_images=test_images)
            return resolve_splits(dopts, preprocess, train_images=train_images, test_images=test_images, record=split)

        torch.manual_seed(seed)
        lm, (train_set, test_set) = load_with_data(model, model_options(pretrained, weights, num_classes, model_arg),
                                                   dopts, loader=splits)
        preprocess = effective_preprocess(used["preprocess"], test_set, split.get("kind") != "folder")
        show(styled("preprocessing:", "bold", f"{describe_preprocess(preprocess)} (from {lm.preprocess_origin})"),
             stderr=True)
        if lm.example_inputs is None:
            check_first_forward(lm.model, test_set, preprocess, model, split.get("kind") == "cifar10", data)
        net = harden(lm.model, config=harden_config, example_inputs=lm.example_inputs)
        result = train(net, train_set, test_set, config, out, resume=resume, arch=lm.source.text,
                       arch_kwargs=lm.arch_kwargs, inputs=inputs_record(preprocess, split), progress=progress)
    table = Table(title=f"{model}: {'fp32' if bits is None else f'{bits}-bit'} training", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    last = result.history[-1] if result.history else None
    for key, value in (("epochs", f"{len(result.history)} ({result.steps} steps"
                                   + (f", resumed after epoch {result.resumed_from}" if result.resumed_from else "")
                                   + ")"),
                       ("train loss", f"{last.loss:.4f}" if last else "-"),
                       ("clean test accuracy", f"{result.test_accuracy:.4f}" if result.test_accuracy is not None
                        else "-"),
                       ("training noise σ", f"{train_sigma:g}" + (f" (ramp {ramp_epochs} epochs)" if ramp_epochs else "")),
                       ("time", f"{result.seconds:.1f} s"), ("checkpoint", str(result.checkpoint))):
        table.add_row(key, value)
    show(table)
    source = " --synthetic" if synthetic else (f" --data {_quote(data)}" if data is not None else "")
    show(f"preprocessing: {describe_preprocess(preprocess)} (stored in the checkpoint, with the held-out split)")
    show(f"next: fxharden sweep {_quote(result.checkpoint)}{source} --out {_quote(out / 'sweep')}")


def _train_text(model: str, options, harden_config, config, data: Optional[Path], tokenizer: str, seq_len: int,
                batch_size: int, seed: int, out: Path, resume: bool, progress: bool, bits: Optional[int],
                train_sigma: float) -> None:
    """The text route of ``fxharden train``: next-token training (noisy fine-tuning) of a
    language model on windows of a text file, the last 10 % held out."""
    import torch

    from ..core.harden import harden
    from ..training.train import train
    from ..zoo.models import load_model
    from ..zoo.text import TEXT_HOLDOUT, batch_windows, check_vocab, input_vocab, load_tokenizer, split_record, \
        text_windows

    if data is None:
        raise typer.BadParameter("--tokenizer needs --data: a UTF-8 text file")
    torch.manual_seed(seed)
    lm = load_model(model, pretrained=options.pretrained, weights=options.weights, num_classes=options.num_classes,
                    model_args=options.model_args)
    windows = text_windows(data, tokenizer, seq_len)
    check_vocab(load_tokenizer(tokenizer), input_vocab(lm.model), model, windows)
    batches = batch_windows(windows, batch_size)
    if len(batches) < 2:
        raise typer.BadParameter(f"{data}: {len(batches)} batch of {batch_size} sequences of {seq_len} tokens; "
                                 f"training holds out the last {TEXT_HOLDOUT:.0%} and needs at least 2 batches: use "
                                 "a longer text, a smaller --batch-size or --seq-len")
    held = max(1, len(batches) // round(1 / TEXT_HOLDOUT))
    net = harden(lm.model, config=harden_config, example_inputs={"input_ids": batches[0][0]})
    first_heldout = (len(batches) - held) * batch_size
    result = train(net, batches[:-held], batches[-held:], config, out, resume=resume, arch=lm.source.text,
                   arch_kwargs=lm.arch_kwargs, progress=progress,
                   inputs={"data": split_record(data, tokenizer, windows, first_heldout)})
    last = result.history[-1] if result.history else None
    table = Table(title=f"{model}: {'fp32' if bits is None else f'{bits}-bit'} training on text", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in (("epochs", f"{len(result.history)} ({result.steps} steps)"),
                       ("train loss (next token)", f"{last.loss:.4f}" if last else "-"),
                       ("held-out token accuracy", f"{result.test_accuracy:.4f}" if result.test_accuracy is not None
                        else "-"),
                       ("training noise σ", f"{train_sigma:g}"), ("time", f"{result.seconds:.1f} s"),
                       ("checkpoint", str(result.checkpoint))):
        table.add_row(key, value)
    show(table)
    show(f"held out: the last {len(windows) - first_heldout} of {len(windows)} sequences; a sweep of the checkpoint "
         f"on {data} measures only those")
    show(f"next: fxharden sweep {_quote(result.checkpoint)} --data {_quote(data)} --tokenizer {_quote(tokenizer)} "
         f"--seq-len {seq_len} --metric perplexity --out {_quote(out / 'sweep')}")


def _quote(path) -> str:
    import shlex

    return shlex.quote(str(path))


# ---------------------------------------------------------------------- reproduce
