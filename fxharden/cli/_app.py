"""What every command shares: the Typer app, console output, the Device/Split choices, the
model/data option sets and the resolution of models, devices, data and harden configs
(``user_errors`` turns the API's errors into a message and exit code 2)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import typer
from rich.console import Console
from rich.text import Text

from ..zoo.options import OnCorrupt, make_data_env_absolute

app = typer.Typer(
    name="fxharden",
    help="Harden PyTorch models against noisy computation and measure their robustness "
         "(midpoint noise level μ).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
OPENMP_SPINCOUNT = "1000"
"""``GOMP_SPINCOUNT`` of a command's process unless the environment sets it. By default an
idle OpenMP thread of torch's CPU kernels spins for milliseconds before it sleeps, and on a
machine with as many cores as torch threads it keeps the core from the threads that draw
noise (``fxharden.core.noise``: 4 streams on several threads). With 1,000 spins the draws run
in parallel, and the plain model's own speed changes little (docs/reproduction.md, "Speed")."""


def plain_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of a command: ``Warning: message`` on stderr, without the
    library's source path, line number and code line that Python's default prints."""
    show(styled("Warning:", "bold yellow", str(message)), stderr=True)


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        console.print(f"fxharden {__version__}")
        raise typer.Exit()


@app.callback()
def _before_every_command(ctx: typer.Context, version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")) -> None:
    # runs before a command imports torch: libgomp reads the variable when torch loads it
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPINCOUNT)
    # a relative $FXHARDEN_DATA means the folder from where the command was typed, also for the
    # processes it starts (cell workers, Ray tasks) in another working directory
    make_data_env_absolute()
    # warnings are messages to the user, not to a developer; restored when the command ends
    # (a test or a Python caller that invokes the app keeps its own)
    previous = warnings.showwarning
    warnings.showwarning = plain_warning
    ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))


# markup off: user text (file names, recipe sections such as [[grid]] or [budget.paper], model
# names) is printed as it is; styles are applied with Text objects only
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)

PIPE_WIDTH = 250
"""Width of tables written to a file or pipe (a terminal's own width is used otherwise)."""


def show(renderable, stderr: bool = False) -> None:
    """Print a table or text without markup; to a file or pipe at ``PIPE_WIDTH`` columns
    instead of rich's 80 (a terminal keeps its own width)."""
    target = err_console if stderr else console
    if not target.is_terminal:
        target = Console(stderr=stderr, markup=False, highlight=False, width=PIPE_WIDTH)
    target.print(renderable, soft_wrap=isinstance(renderable, str))


def styled(label: str, style: str, text: str) -> Text:
    """``label`` in ``style``, then ``text`` exactly as given (no markup)."""
    return Text.assemble((label, style), " ", text)


class Device(str, Enum):
    """Where to run."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Split(str, Enum):
    """Which CIFAR-10 split to evaluate on."""

    TEST = "test"
    TRAIN = "train"


# ---------------------------------------------------------------------- shared options


def _model_opts():
    return dict(
        pretrained=typer.Option(False, "--pretrained", help="Load the library's pretrained weights (timm: hub or "
                                "its cache, the tag of timm:NAME.TAG; torchvision: DEFAULT)."),
        weights=typer.Option(None, help="Weights file (state_dict or .safetensors) for any model source; for "
                             "torchvision also DEFAULT or a weights name such as IMAGENET1K_V1."),
        num_classes=typer.Option(None, min=1, help="Classifier head size; differs from the weights' head: a new "
                                 "head (fine-tune it). Default: the weights' head, or the data's classes."),
        model_arg=typer.Option(None, help="key=value argument for the model builder (repeatable), e.g. "
                               "--model-arg depth=4 for package.module:factory."),
    )


def _data_opts():
    return dict(
        input_size=typer.Option(None, min=1, help="Override the model's input size (square, pixels)."),
        mean=typer.Option(None, help="Override the normalisation mean, e.g. 0.485,0.456,0.406."),
        std=typer.Option(None, help="Override the normalisation std, e.g. 0.229,0.224,0.225."),
        crop_pct=typer.Option(None, min=0.01, max=1.0, help="Override the centre-crop fraction (resize to "
                              "size / crop-pct, then crop)."),
        on_corrupt=typer.Option(OnCorrupt.STOP, help="An image that cannot be decoded: stop, or skip it with a "
                                "warning."),
        workers=typer.Option(None, min=0, help="Processes decoding images (default: up to 4)."),
        eval_data=typer.Option(None, "--data", help="CIFAR-10 folder, or an image folder (one subfolder per class; "
                               "decoded once with the model's preprocessing), or a text file (with --tokenizer). "
                               "Default: $FXHARDEN_DATA."),
        download=typer.Option(False, "--download", help="Let torchvision download CIFAR-10 if it is missing."),
        split=typer.Option(Split.TEST, help="CIFAR-10 split to evaluate on."),
        max_images=typer.Option(None, min=1, help="Use N images: CIFAR-10's first N, a stratified selection of an "
                                "image folder."),
        synthetic=typer.Option(False, "--synthetic", help="Generated images instead of CIFAR-10 (demos, tests)."),
        tokenizer=typer.Option(None, help="Text data: --data is a UTF-8 text file, cut into --seq-len token "
                               "windows by this tokenizer (a Hugging Face tokenizer folder, or 'bytes'); for "
                               "language models (hf:FOLDER)."),
        seq_len=typer.Option(128, min=2, help="Tokens per sequence of text data (with --tokenizer)."),
    )


def _quant_opts():
    return dict(
        scale=typer.Option(None, help="Constant quantization step s of every post-activation quantizer (with --bits; "
                           "default 1.0)."),
        dynamic=typer.Option(False, "--dynamic", help="Learned (dynamic) quantization steps instead of --scale."),
    )


_M, _D, _Q = _model_opts(), _data_opts(), _quant_opts()

# ---------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the API's user-facing errors into a one-paragraph message and exit code 2."""
    from ..zoo.data import DataNotFoundError
    from ..core.trace import UntraceableModelError

    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, TimeoutError, ConnectionError,
            DataNotFoundError, UntraceableModelError) as err:
        show(styled("Error:", "bold red", str(err)), stderr=True)
        raise typer.Exit(2) from None


def harden_options(bits: Optional[int], scale: Optional[float], dynamic: bool):
    """The ``HardenConfig`` of ``--bits/--scale/--dynamic`` (``None``: noise sites only)."""
    from ..core.config import HardenConfig

    if bits is None:
        if dynamic or scale is not None:
            raise typer.BadParameter("--scale and --dynamic need --bits (they set the quantization step)")
        return None
    if dynamic and scale is not None:
        raise typer.BadParameter("give either --scale (constant step) or --dynamic (learned steps), not both")
    return HardenConfig.from_shorthand(bits=bits, scale=None if dynamic else (1.0 if scale is None else scale))


HARDWARE_HELP = ("The hardware the model names are hardened for: a preset (aihwkit-inference, pcm, analog-tile) or a "
                 "TOML file with a [hardware] table (weight_noise, noise_model, noise_sigma, placement, adc, dac; "
                 "docs/noise_models.md), applied on top of --bits/--scale/--dynamic.")


def hardware_options(hardware: Optional[str], harden_config):
    """``harden_config`` (``None``: noise sites only) with the hardware of ``--hardware``
    applied, or ``harden_config`` itself without it."""
    if hardware is None:
        return harden_config
    from ..core.hardware import resolve_hardware

    return resolve_hardware(hardware).harden_config(harden_config)


def resolve_device(device: Device) -> str:
    """``"cpu"`` or ``"cuda"``; ``auto`` picks CUDA when available."""
    from ..devices import resolve_device as pick

    return str(pick(None if device is Device.AUTO else device.value))


def model_options(pretrained: bool, weights: Optional[str], num_classes: Optional[int],
                  model_arg: Optional[List[str]]):
    """The ``ModelOptions`` of ``--pretrained/--weights/--num-classes/--model-arg``."""
    from ..zoo.inputs import ModelOptions
    from ..zoo.sources import parse_model_args

    return ModelOptions(pretrained=pretrained, weights=weights, num_classes=num_classes,
                        model_args=parse_model_args(model_arg))


def _floats(text: Optional[str], option: str) -> Optional[Tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}") \
            from None


def data_options(data: Optional[Path], split: "Split", download: bool, max_images: Optional[int],
                 input_size: Optional[int], mean: Optional[str], std: Optional[str], crop_pct: Optional[float],
                 on_corrupt: "OnCorrupt", workers: Optional[int]):
    """The ``DataOptions`` of ``--data`` and the preprocessing overrides."""
    from ..zoo.inputs import DataOptions

    return DataOptions(path=data, split=split.value, max_images=max_images, on_corrupt=on_corrupt.value,
                       workers=workers, download=download, input_size=input_size, mean=_floats(mean, "--mean"),
                       std=_floats(std, "--std"), crop_pct=crop_pct)


TEXT_NEEDS_TOKENIZER = ("text data need --tokenizer: bytes (UTF-8 bytes, 256 tokens) or the folder of a Hugging Face "
                        "tokenizer, with --seq-len (tokens per sequence), e.g. --tokenizer bytes --seq-len 128")


def check_data(names: List[str], data: Optional[Path], tokenizer: Optional[str], download: bool = False) -> None:
    """Refuse, before anything loads, a ``--data`` that does not exist (naming close names) and
    text without ``--tokenizer``: a ``--data`` file that is not CIFAR-10, or an ``hf:`` model."""
    from .._files import missing_path
    from ..zoo.folders import is_cifar_root

    if data is not None and not download and not Path(data).expanduser().exists():
        raise FileNotFoundError(f"{missing_path(data, '--data')}; give an image folder, a CIFAR-10 folder or a text "
                                "file (--download fetches CIFAR-10 into a new folder)")
    if tokenizer is not None:
        return
    if data is not None and Path(data).expanduser().is_file() and not is_cifar_root(data):
        raise typer.BadParameter(f"--data {data} is a file, not an image folder or CIFAR-10: {TEXT_NEEDS_TOKENIZER}")
    hf = [n for n in names if n.startswith("hf:")]
    if hf:
        raise typer.BadParameter(f"{hf[0]} is a language model: {TEXT_NEEDS_TOKENIZER}")


def resolve_models(names: List[str], harden_config, seed: int = 0, options=None, data=None,
                   model_preprocess: bool = False):
    """``([(label, hardened model)], data, provenance)``: per MODEL argument, a checkpoint path
    (``is_checkpoint``) loaded with its own harden config, or a model source
    (``fxharden.zoo.sources``) loaded with ``options`` (seeded random weights without weights)
    and hardened with ``harden_config``; the evaluation data (when ``data``, ``DataOptions``,
    is given) decoded with the first model's preprocessing: a checkpoint's stored one (else
    its architecture's), a source's own, each with the command line's overrides. A checkpoint
    evaluated on the image folder it was trained on gets the images it held out.
    ``provenance``: ``{"preprocess": {..., "origin"}, "weights": [...], "data": note}`` (the
    preprocessing is ``None`` without data unless ``model_preprocess``: then the model's)."""
    import torch

    from ..core.config import HardenConfig
    from ..core.harden import harden
    from ..zoo.checkpoint import is_checkpoint, load_checkpoint
    from ..zoo.folders import uses_cifar
    from ..zoo.inputs import ModelOptions, check_first_forward, effective_preprocess, heldout_data, load_with_data, \
        resolve_dataset
    from ..zoo.models import CIFAR_PREPROCESS, load_model

    options = options or ModelOptions()
    out, dataset, preprocess, origin, weights, split = [], None, None, "", [], {}
    probe = None  # (source, plain model) whose first forward checks the input size
    for name in names:
        if is_checkpoint(name):
            if harden_config is not None:
                raise typer.BadParameter(f"{name} is a checkpoint: it carries its own harden config, so "
                                         "--bits/--scale/--dynamic/--hardware do not apply")
            ck = load_checkpoint(name)
            if ck.inputs.get("data", {}).get("kind") == "text" or ck.arch.startswith("hf:"):
                raise typer.BadParameter(f"{name} is a language model checkpoint: {TEXT_NEEDS_TOKENIZER}")
            out.append((name, ck.model))
            weights.append(f"checkpoint {Path(name).resolve()}")
            if preprocess is None and ck.preprocess is not None:
                preprocess, origin, split = ck.preprocess, "the checkpoint (as trained)", ck.inputs.get("data", {})
            elif preprocess is None and ck.arch:  # older checkpoints: the preprocessing of the trained architecture
                kwargs = dict(ck.arch_kwargs)
                lm = load_model(ck.arch, num_classes=kwargs.pop("num_classes", None), model_args=kwargs)
                preprocess, origin = lm.preprocess, f"{lm.preprocess_origin} of {ck.arch} (not in the checkpoint)"
            continue
        if not name.startswith("hf:") and (any(ch in name for ch in "/\\") or name.endswith((".pt", ".pth"))):
            raise typer.BadParameter(f"no checkpoint file at {name!r}; give an existing checkpoint path or a "
                                     "model source (lenet5, timm:NAME, torchvision:NAME, package.module:factory, "
                                     "hf:FOLDER)")
        torch.manual_seed(seed)
        if data is not None and dataset is None and preprocess is None:
            lm, dataset = load_with_data(name, options, data)
            probe = (name, lm.model) if lm.example_inputs is None else None
        else:
            lm = load_model(name, pretrained=options.pretrained, weights=options.weights,
                            num_classes=options.num_classes, model_args=options.model_args)
        if preprocess is None:
            preprocess, origin = lm.preprocess, lm.preprocess_origin
        weights.append(lm.weights or f"random (seed {seed})")
        out.append((name, harden(lm.model, config=harden_config or HardenConfig(quant=None),
                                 example_inputs=lm.example_inputs)))
    if preprocess is None:
        preprocess, origin = CIFAR_PREPROCESS, "the paper's CIFAR-10 preprocessing"
    provenance = {"preprocess": None, "weights": weights, "data": ""}
    if data is None:
        if model_preprocess and not all(n.startswith("hf:") for n in names):  # language models take no images
            provenance["preprocess"] = {**preprocess.to_dict(), "origin": origin}
        return out, dataset, provenance
    given = [f"--{k.replace('_', '-')}" for k in ("input_size", "mean", "std", "crop_pct")
             if getattr(data, k) is not None]
    cifar = uses_cifar(data.path, data.download)
    if cifar and split.get("kind") == "cifar10" and data.mean is None and data.std is None:
        data = dataclasses.replace(data, mean=preprocess.mean, std=preprocess.std)  # as the checkpoint trained
    used = data.preprocess(preprocess)
    if dataset is None:
        dataset = heldout_data(data, used, split)
        if dataset is not None:
            provenance["data"] = (f"the {len(dataset)} images of {data.path} that the checkpoint held out from "
                                  "training (split stored in it)")
        else:
            dataset = resolve_dataset(data, used)
    if cifar:
        origin = "CIFAR-10 images as they are (32x32)" + (f"; {', '.join(given)} from the command line" if given
                                                          else f"; normalisation: {origin}")
    elif given:
        origin = f"{origin}, with {', '.join(given)} from the command line"
    effective = effective_preprocess(used, dataset, cifar)
    provenance["preprocess"] = {**effective.to_dict(), "origin": origin}
    show(styled("preprocessing:", "bold", f"{describe_preprocess(effective)} (from {origin})"), stderr=True)
    if probe is not None:
        check_first_forward(probe[1], dataset, effective, probe[0], cifar, data.path)
    return out, dataset, provenance


def text_inputs(names: List[str], options, data: Optional[Path], tokenizer: str, seq_len: int, batch_size: int,
                max_sequences: Optional[int], seed: int):
    """``([(label, model)], batches, provenance)`` for text data (``--tokenizer``): plain models
    from sources (hardened by ``sweep``/``budget`` with the first batch as torch.export's
    example), checkpoints loaded hardened, and ``(ids, ids)`` batches of a text file: of the
    sequences the first checkpoint held out when that text is the one it trained on. Token ids
    past a model's input embedding are refused before any forward."""
    import torch

    from ..zoo.checkpoint import load_checkpoint
    from ..zoo.models import load_model
    from ..zoo.text import batch_windows, check_vocab, heldout_windows, input_vocab, load_tokenizer, text_windows

    if data is None:
        raise typer.BadParameter("--tokenizer needs --data: a UTF-8 text file")
    tok = load_tokenizer(tokenizer)
    nets, vocabs, windows, note = [], [], None, ""
    for name in names:
        if Path(name).is_file():
            ck = load_checkpoint(name)
            nets.append((name, ck.model))  # hardened with its own config
            vocabs.append((name, ck.vocab))
            if windows is None:
                windows = heldout_windows(ck.inputs.get("data", {}), data, tokenizer, seq_len)
                if windows is not None:
                    note = f"evaluating the {len(windows[:max_sequences])} held-out sequences of {seq_len} tokens " \
                           f"that {name} did not train on (split stored in it)"
            continue
        torch.manual_seed(seed)
        lm = load_model(name, pretrained=options.pretrained, weights=options.weights, num_classes=options.num_classes,
                        model_args=options.model_args)
        nets.append((name, lm.model))
        vocabs.append((name, input_vocab(lm.model)))
    if windows is None:
        windows = text_windows(data, tokenizer, seq_len)
        note = f"{len(windows[:max_sequences])} sequences of {seq_len} tokens"
    for name, vocab in vocabs:
        check_vocab(tok, vocab, name, windows)
    batches = batch_windows(windows, batch_size, max_sequences)
    return nets, batches, {"data": f"text {data}, tokenizer {tokenizer}: {note}", "unit": "sequences"}


def inputs_rows(provenance) -> List[Tuple[str, str]]:
    """Summary rows of a ``resolve_models`` provenance: preprocessing (and its origin), data
    note, weights."""
    rows = []
    pre = provenance.get("preprocess")
    if pre:
        rows.append(("preprocessing", f"{describe_preprocess(pre)} (from {pre.get('origin', '?')})"))
    if provenance.get("data"):
        rows.append(("data", provenance["data"]))
    if provenance.get("weights"):
        rows.append(("weights", "; ".join(provenance["weights"])))
    return rows


def describe_preprocess(p) -> str:
    """``224x224, mean (...), std (...), crop 0.875, bicubic`` of a ``Preprocess`` or its dict."""
    d = p if isinstance(p, dict) else p.to_dict()
    size = d["input_size"]
    nums = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    return (f"{size[1]}x{size[2]}, mean {nums(d['mean'])}, std {nums(d['std'])}, crop {d['crop_pct']:g}, "
            f"{d['interpolation']}")


def parse_sigmas(text: Optional[str]) -> Optional[Tuple[float, ...]]:
    """``"0.1,0.2,0.5"`` -> floats (each > 0)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"--sigmas must be a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise typer.BadParameter(f"--sigmas must be noise levels > 0 (sigma 0 is always measured), got {text!r}")
    return values


# ---------------------------------------------------------------------- sweep
