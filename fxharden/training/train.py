"""QAT and noisy training of a hardened model, with atomic per-epoch checkpoints and resume.

``train`` runs Adam (or SGD) with cosine learning-rate decay through the straight-through
estimator: constant quantization steps are buffers and stay fixed, dynamic steps are
parameters and are learned. Activation noise is injected during training only when the config
asks for it (``train_sigma``); weight noise keeps the harden config's setting. The final
evaluation is clean (sigma 0).

Determinism: every random stream of epoch ``e`` (shuffling, dropout, noise) is derived from
``(seed, e)``, and the checkpoint of epoch ``e`` holds model, optimizer and scheduler, so a
run resumed from it repeats the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._files import atomic_write_json, check_writable
from ..devices import resolve_device
from ..zoo.checkpoint import read_payload, save_checkpoint
from ..core.config import config_to_dict
from ..core.exactness import ExactnessCheck
from ..zoo.data import as_batches, is_batch_list
from ..measure.scores import IGNORE_INDEX, align_targets, output_logits
from ..core.harden import HardenedModule, harden
from ..zoo.options import Optimizer
from ..core.calibrate import calibrate_quantizers, call_model
from ..core.noise.verbs import check_sites, noise_modules, noise_off, seed_noise, set_noise
from ..core.quant import ActQuant, frozen_weights
from .config import LRSchedule, TrainConfig
from .feed import on_device, training_batches
from .options import NoiseSchedule, Precision
from .status import ProgressFile

__all__ = ["Optimizer", "LRSchedule", "Precision", "NoiseSchedule", "TrainConfig", "EpochLog", "TrainResult",
           "train", "evaluate", "CHECKPOINT", "LOG"]

CHECKPOINT, LOG = "checkpoint.pt", "train_log.json"
"""File names inside a training run's output directory."""


@dataclass(frozen=True)
class EpochLog:
    """One entry of ``train_log.json``'s history."""

    epoch: int
    steps: int
    loss: float
    train_accuracy: float
    test_accuracy: Optional[float]
    lr: float
    sigma: float
    """Global training sigma of this epoch (0 with per-site sigmas)."""
    seconds: float


@dataclass
class TrainResult:
    """What ``train`` returns. The model is in eval mode, its noise as it was before training."""

    model: HardenedModule
    history: List[EpochLog]
    test_accuracy: Optional[float]
    """Clean (sigma 0) accuracy on the test data after training, in [0, 1]."""
    steps: int
    seconds: float
    resumed_from: Optional[int] = None
    """Epochs already done in the checkpoint this run resumed from (``None``: fresh run)."""
    checkpoint: Optional[Path] = None


def _first_inputs(data: Any) -> Any:
    """The inputs of the first batch of a batch list (``harden``'s example for models torch.fx
    cannot trace), else ``None``."""
    return data[0][0] if is_batch_list(data) else None


def _num_batches(data: Any, batch_size: int) -> int:
    """Batches per epoch with ``drop_last`` (a set smaller than a batch still gives one)."""
    if isinstance(data, torch.utils.data.DataLoader):
        return len(data)
    if is_batch_list(data):
        return len(data)
    n = len(data[0]) if isinstance(data, (tuple, list)) else len(data)
    return n // batch_size if n >= batch_size else 1


def loss_and_hits(out: Any, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy, correct predictions and scored targets of a batch: a classifier's
    ``(batch, classes)`` logits against ``(batch,)`` labels, or a language model's ``(batch,
    length, vocab)`` logits (a tensor or a ``ModelOutput``) against next tokens (targets shifted
    by one, ``-100`` ignored, as ``fxharden.measure.scores`` scores them)."""
    logits, targets = align_targets(output_logits(out), y)
    logits, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    valid = targets != IGNORE_INDEX
    loss = nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    return loss, ((logits.argmax(-1) == targets) & valid).sum(), valid.sum()


def _autocast(device: torch.device, precision: Precision):
    if precision is Precision.AUTO:
        precision = Precision.BF16 if device.type == "cuda" else Precision.FP32
    if precision is Precision.FP32:
        return contextlib.nullcontext(), None
    if precision is Precision.FP16 and device.type != "cuda":
        raise ValueError("precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype), torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007) % (2**63)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    steps = {id(m.scale) for m in model.modules() if isinstance(m, ActQuant) and isinstance(m.scale, nn.Parameter)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in steps], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if id(p) in steps], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 512, device: Optional[str] = None, *,
             reference: Optional[nn.Module] = None, check_exact: Optional[bool] = None) -> float:
    """Accuracy in [0, 1] of ``model`` in eval mode, with its current noise, on ``data``.

    Activation steps that have seen no training data are first calibrated and fixed on the
    first batches of ``data``, clean (``fxharden.calibrate_quantizers``).

    Args:
        reference: the plain model ``model`` was hardened from (same weights): on the first
            batch of every new input signature, ``model`` without noise and quantization must
            reproduce it (``fxharden.core.exactness``: one plain forward per signature), else
            ``ExactnessError`` names the site where they first differ.
        check_exact: ``False`` skips that check; ``None``: on unless ``FXHARDEN_CHECK_EXACT=0``.
    """
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    check = ExactnessCheck(model, reference, check_exact, where="evaluate")
    if any(isinstance(m, ActQuant) and m.needs_data for m in model.modules()):
        calibrate_quantizers(model, as_batches(data, batch_size, dev))
    was, correct, total = model.training, 0, 0
    model.eval()
    try:
        with frozen_weights(model):  # the weights cannot change here: quantize each once, not once per batch
            for x, y in as_batches(data, batch_size, dev):
                check(x)
                _, hits, count = loss_and_hits(call_model(model, x), y)
                correct += int(hits)
                total += int(count)
    finally:
        model.train(was)
    return correct / max(total, 1)


def _clean_accuracy(model: HardenedModule, data: Any, cfg: TrainConfig, dev: torch.device) -> float:
    with noise_off(model):  # clean: no activation noise and no weight noise
        return evaluate(model, data, cfg.eval_batch_size, str(dev))


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"), TimeRemainingColumn(),
                    transient=True)


_NOT_COMPARED = ("device", "precision", "eval_batch_size", "eval_each_epoch", "deterministic", "epochs")
"""Settings a run may be resumed with changed (``epochs``: a longer run extends it)."""


def _load_resume(out: Optional[Path], resume: bool, cfg: TrainConfig, model: HardenedModule,
                 arch: Optional[str]) -> Optional[Dict[str, Any]]:
    if out is None:
        if resume:
            raise ValueError("resume=True needs out=<output directory of the run to continue>")
        return None
    path = out / CHECKPOINT
    if not path.exists():
        return None
    if not resume:
        raise FileExistsError(f"{path} exists; pass resume=True (CLI: --resume) to continue that run, "
                              "or choose another output directory")
    other = "use the original settings, or another output directory"
    try:
        payload = read_payload(path)  # weights_only: reading never runs code from the file
    except ValueError as err:
        raise ValueError(f"cannot resume {path}: the file cannot be read ({str(err).splitlines()[0]}); remove it to "
                         "start over, or choose another output directory") from None
    if arch and payload.get("arch") and payload["arch"] != arch:
        raise ValueError(f"cannot resume {path}: it holds a {payload['arch']} network, not {arch}; {other}")
    stored_harden, harden_now = payload.get("config"), json.loads(json.dumps(config_to_dict(model.harden_config)))
    if stored_harden != harden_now:
        keys = sorted(k for k in set(stored_harden or {}) | set(harden_now)
                      if (stored_harden or {}).get(k) != harden_now.get(k))
        raise ValueError(f"cannot resume {path}: it was hardened with another config ({', '.join(keys)} differ, "
                         f"e.g. quantization {_bits_text(stored_harden)} there, {_bits_text(harden_now)} now); {other}")
    stored, now = payload["state"].get("train_config") or {}, json.loads(json.dumps(cfg.to_dict()))
    default = json.loads(json.dumps(TrainConfig().to_dict()))  # what a key absent from an older file meant
    diff = sorted(k for k in now if k not in _NOT_COMPARED and stored.get(k, default.get(k)) != now[k])
    if diff:
        raise ValueError(f"cannot resume {path}: it was trained with other settings ({', '.join(diff)} differ); "
                         f"{other}")
    done = payload["state"].get("epoch", 0)
    if cfg.epochs < stored.get("epochs", cfg.epochs) and cfg.epochs < done + (not payload["state"].get("finished")):
        raise ValueError(f"cannot resume {path} with epochs={cfg.epochs}: it has already trained {done} epoch(s) "
                         f"of {stored.get('epochs')}; give epochs >= {stored.get('epochs')} (more extends the run)")
    return payload


def _bits_text(config: Optional[Dict[str, Any]]) -> str:
    quant = (config or {}).get("quant")
    return "fp32" if not quant else f"{quant.get('bits')}-bit"


def train(
    model: nn.Module,
    data_train: Any,
    data_test: Any = None,
    config: TrainConfig = TrainConfig(),
    out: Union[str, Path, None] = None,
    *,
    resume: bool = False,
    arch: Optional[str] = None,
    arch_kwargs: Optional[Dict[str, Any]] = None,
    inputs: Optional[Dict[str, Any]] = None,
    progress: bool = False,
) -> TrainResult:
    """Train a hardened model (QAT through the straight-through estimator, optional noise).

    Args:
        model: a ``HardenedModule`` (trained in place), or a plain model, which is hardened
            without quantization first (so ``train_sigma`` has noise sites to use).
        data_train: anything ``fxharden.zoo.data.as_batches`` accepts; a ``TensorImageDataset``
            (uint8 in memory, normalised per batch on the device) is the fast path.
        data_test: the same kind; its clean accuracy is measured after training.
        config: the training settings.
        out: directory for ``checkpoint.pt`` (written atomically after every epoch) and
            ``train_log.json``, and ``progress.json`` (epoch and step, rewritten every ~2 s while
            training: ``fxharden.training.status``); ``None`` keeps nothing on disk.
        resume: continue from ``out/checkpoint.pt`` (model, optimizer, scheduler, epoch);
            a finished run is returned as it is. With more ``epochs`` than the stored run
            planned, the run is extended: optimizer state and weights continue, and the
            learning-rate schedule restarts (a new cosine decay from ``lr`` to 0 over the added
            steps, a warm restart). Fewer epochs than stored are refused.
        arch, arch_kwargs: the ``fxharden.zoo.models.build_model`` name and builder arguments of the model,
            stored in the checkpoint so ``load_checkpoint`` / ``fxharden sweep`` rebuild it.
        inputs: how the data were prepared and split (``fxharden.zoo.inputs.inputs_record``),
            stored in the checkpoint so sweeps of it use the same preprocessing and held-out images.
        progress: show a rich progress bar with loss and accuracy.

    Raises:
        FileExistsError: ``out`` holds a checkpoint and ``resume`` is False.
        PermissionError: ``out`` cannot be written (before any training).
        ValueError: a bad setting, or a checkpoint trained with other settings.
    """
    cfg, out = config, (Path(out) if out is not None else None)
    dev = resolve_device(cfg.device)
    if out is not None:
        check_writable(out)
    plain = None if isinstance(model, HardenedModule) else model
    model = model if plain is None else harden(model, example_inputs=_first_inputs(data_train))
    mods = noise_modules(model)  # activation noise; weight noise keeps its own setting
    check_sites(mods, [site for site, _ in cfg.noise.per_site], context="train_sigma names an ")
    caller_noise = {s: m.setting() for s, m in mods.items()}
    caller_seed = {s: m.seed for s, m in mods.items()}
    payload = _load_resume(out, resume, cfg, model, arch)
    if payload is not None:
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise ValueError(f"cannot resume {out / CHECKPOINT}: its weights do not fit this network "
                             f"({str(err).splitlines()[0]}); use the original model and settings, or another "
                             "output directory") from None
    model.to(dev)
    data_train = on_device(data_train, dev)  # uint8 images stay on the GPU: a step only indexes there
    total = cfg.epochs * _num_batches(data_train, cfg.batch_size)
    total = min(total, cfg.max_steps or total)
    state: Dict[str, Any] = {"epoch": 0, "step": 0, "finished": False, "history": []}
    if payload is not None:
        state = {k: payload["state"][k] for k in state}
    extended = payload is not None and payload["state"]["train_config"].get("epochs") != cfg.epochs
    if extended:  # more epochs than the stored run planned: a fresh schedule over the added steps
        state["finished"] = state["epoch"] >= cfg.epochs or state["step"] >= total
    optimizer = _make_optimizer(model, cfg)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - state["step"]))
                 if cfg.schedule is LRSchedule.COSINE else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    autocast, scaler = _autocast(dev, cfg.precision)
    if payload is not None:
        optimizer.load_state_dict(payload["state"]["optimizer"])
        if extended:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = cfg.lr
        else:
            scheduler.load_state_dict(payload["state"]["scheduler"])
        if scaler is not None and payload["state"].get("scaler"):
            scaler.load_state_dict(payload["state"]["scaler"])
    history = [EpochLog(**h) for h in state.pop("history")]
    resumed_from = state["epoch"] if payload is not None else None
    # the first batch, before any step moves the weights away from the plain model's
    exact = [ExactnessCheck(model, plain if payload is None else None, cfg.check_exact, where="train, first batch")]

    def step(x: Any, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if exact:
            exact.pop()(x)
        with autocast:
            loss, hits, count = loss_and_hits(call_model(model, x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        return loss.detach(), hits, count

    def save() -> None:
        for s, m in mods.items():  # the checkpoint keeps the caller's noise setting
            m.restore(caller_noise[s])
        extra = {"history": [asdict(h) for h in history], "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "train_config": json.loads(json.dumps(cfg.to_dict()))}
        save_checkpoint(out / CHECKPOINT, model, arch or "", arch_kwargs, {**state, **extra}, inputs)
        log = {"arch": arch, "arch_kwargs": arch_kwargs or {}, **state, "train_config": extra["train_config"],
               "history": extra["history"]}
        atomic_write_json(out / LOG, log, indent=2)

    start, bar = time.perf_counter(), _progress(progress)
    status = ProgressFile(out, cfg.epochs, total)
    status.update(state, force=True)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    cuda = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else []
    try:
        torch.use_deterministic_algorithms(cfg.deterministic if cfg.deterministic is not None
                                           else dev.type == "cpu", warn_only=True)
        with torch.random.fork_rng(devices=cuda), (bar or contextlib.nullcontext()):
            task = bar.add_task("train", total=total, completed=state["step"], loss=math.nan, acc=math.nan) \
                if bar else None
            while not state["finished"]:
                epoch, t0 = state["epoch"], time.perf_counter()
                seed = _epoch_seed(cfg.seed, epoch)
                torch.manual_seed(seed)
                seed_noise(model, seed)
                f, per_site = cfg.noise.factor(epoch), dict(cfg.noise.per_site)
                set_noise(model, {s: f * (per_site.get(s, 0.0) if per_site else cfg.noise.sigma) for s in mods})
                batches = training_batches(data_train, cfg.batch_size, dev, torch.Generator().manual_seed(seed),
                                           cfg.augment)
                report = None if bar is None else (lambda l, a: bar.update(
                    task, completed=state["step"], description=f"epoch {epoch + 1}/{cfg.epochs}", loss=l, acc=a))
                loss, acc = _epoch(model, batches, step, state, total, report, status.update)
                test_acc = _clean_accuracy(model, data_test, cfg, dev) \
                    if data_test is not None and cfg.eval_each_epoch else None
                history.append(EpochLog(epoch + 1, state["step"], loss, acc, test_acc, scheduler.get_last_lr()[0],
                                        f * cfg.noise.sigma, time.perf_counter() - t0))
                state["epoch"] = epoch + 1
                state["finished"] = state["epoch"] >= cfg.epochs or state["step"] >= total
                if out is not None:
                    save()
                    status.update(state, force=True)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        for s, m in mods.items():
            m.restore(caller_noise[s])
            m.reseed(caller_seed[s])
    model.eval()
    acc = history[-1].test_accuracy if history else None
    if data_test is not None and acc is None:
        acc = _clean_accuracy(model, data_test, cfg, dev)
    return TrainResult(model=model, history=history, test_accuracy=acc, steps=state["step"],
                       seconds=time.perf_counter() - start, resumed_from=resumed_from,
                       checkpoint=(out / CHECKPOINT) if out is not None else None)


def _epoch(model: nn.Module, batches, step: Callable, state: Dict[str, Any], total: int,
           report: Optional[Callable[[float, float], Any]],
           tick: Callable[[Dict[str, Any]], Any] = lambda state: None) -> Tuple[float, float]:
    """One pass over ``batches`` (stops at ``total`` steps); mean training loss and accuracy.
    ``tick(state)`` after every step (``ProgressFile.update``: it writes at a bounded rate)."""
    model.train()
    loss_sum: Any = 0.0
    correct: Any = 0
    seen: Any = 0
    for x, y in batches:
        loss, hits, count = step(x, y)
        state["step"] += 1
        loss_sum = loss * count + loss_sum  # stays on the device: no sync per step
        correct = hits + correct
        seen = count + seen
        tick(state)
        if report is not None and (state["step"] % 10 == 0 or state["step"] == total):
            report(float(loss_sum) / float(seen), float(correct) / float(seen))
        if state["step"] >= total:
            break
    seen = max(float(seen), 1.0)
    return float(loss_sum) / seen, float(correct) / seen
