"""fxharden's per-channel weight noise and MVM output noise against IBM aihwkit-lightning.

Same weights and inputs on both sides: a small MLP and a small CNN trained on scikit-learn's
digits (8x8 images). Three steps, because the peer lives in its own virtual environment:

    # 1. project venv: train the two nets, write their weights, test data and input range
    python benchmarks/aihwkit_compare.py --prepare aihw/model.npz
    # 2. the peer's venv PEER_VENV (python3.11 -m venv PEER_VENV &&
    #    PEER_VENV/bin/pip install torch==2.13.0 aihwkit-lightning): measure the peer
    PEER_VENV/bin/python benchmarks/aihwkit_compare.py --peer-dump aihw/peer.npz \
        --model aihw/model.npz
    # 3. project venv: measure fxharden the same way, print the ratios and z-scores
    python benchmarks/aihwkit_compare.py --compare aihw/peer.npz --model aihw/model.npz

Measured on each side, through each library's own forward pass:
- weight noise: the noisy weights of a layer read back through its forward (an identity input,
  one-hot images for a convolution), ``R`` draws; the std of ``w_noisy - w`` per output channel,
  per channel (``ADD_NORMAL_PER_CHANNEL`` / ``Additive(of_max=True, per_channel=True)``) and per
  tensor (``ADD_NORMAL`` / ``Additive(of_max=True)``);
- output noise: a fixed input repeated, the std of ``y - y_clean`` per output channel
  (``out_noise`` with and without ``out_noise_per_channel`` / ``OutNoise``);
- accuracy on the test set under noise, ``REPEATS`` draws (one draw per pass over the test set),
  compared by the z-score of the difference of the two means.

The peer applies its noise in training mode only; fxharden whenever sigma > 0. The npz files are
written and read without numpy (the peer's venv has none).
"""

from __future__ import annotations

import argparse
import ast
import io
import math
import struct
import zipfile
from typing import Dict

import torch
from torch import Tensor, nn

SIGMA_W = 0.1  # weight noise (relative to max|w|) for the std ratios
SIGMA_OUT = 0.1  # output noise (relative to input range x max|w|) for the std ratios
ACC_SIGMA_W = 0.15
ACC_SIGMA_OUT = 0.1
DRAWS = 1000
REPEATS = 100
SETTINGS = ("wpc", "wpt", "opc", "opt")
"""Weight noise per channel / per tensor, output noise per channel / per tensor."""
LAYERS = {"mlp": ("1", "3"), "cnn": ("0", "4")}
"""The conv/linear layers of each net (names in its ``nn.Sequential``)."""


def build(net: str) -> nn.Sequential:
    """The two nets: an MLP 64-64-10 and a CNN conv(1->8, 3x3) - pool - linear(128->10)."""
    if net == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))


# ---------------------------------------------------------------- npz without numpy

_DTYPES = {torch.float32: "<f4", torch.int64: "<i8"}


def save_npz(path: str, arrays: Dict[str, Tensor]) -> None:
    """Write ``arrays`` (float32 / int64 tensors) as an ``.npz`` numpy can read."""
    with zipfile.ZipFile(path, "w") as z:
        for name, t in arrays.items():
            t = t.detach().cpu().contiguous()
            t = t.float() if t.is_floating_point() else t.long()
            header = repr({"descr": _DTYPES[t.dtype], "fortran_order": False, "shape": tuple(t.shape)})
            header += " " * (63 - (10 + len(header)) % 64) + "\n"
            data = bytes(t.reshape(-1).view(torch.uint8).tolist()) if t.numel() else b""
            z.writestr(f"{name}.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data)


def load_npz(path: str) -> Dict[str, Tensor]:
    """Read an ``.npz`` written by ``save_npz``."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            raw = io.BytesIO(z.read(name))
            raw.read(8)
            (n,) = struct.unpack("<H", raw.read(2))
            head = ast.literal_eval(raw.read(n).decode())
            dtype = {v: k for k, v in _DTYPES.items()}[head["descr"]]
            out[name[:-4]] = torch.frombuffer(bytearray(raw.read()), dtype=dtype).reshape(head["shape"]).clone()
    return out


def load_net(arrays: Dict[str, Tensor], net: str) -> nn.Sequential:
    model = build(net)
    model.load_state_dict({k[len(net) + 1:]: v for k, v in arrays.items() if k.startswith(net + ".")})
    return model.eval()


# ---------------------------------------------------------------- measurements shared by both sides

def noisy_weights(layer: nn.Module, weight: Tensor, bias: Tensor) -> Tensor:
    """One draw of the noisy weight of ``layer`` read through its forward, as ``(out, fan_in)``:
    an identity input for a linear layer, one-hot 3x3 images (padding 1: the centre output reads
    the whole kernel) for the convolution."""
    with torch.no_grad():
        if weight.dim() == 2:
            return (layer(torch.eye(weight.shape[1])) - bias).t()
        k = weight[0].numel()
        out = layer(torch.eye(k).view(k, weight.shape[1], *weight.shape[2:]))[:, :, 1, 1]
        return (out - bias).t()


def weight_std(layer: nn.Module, weight: Tensor, bias: Tensor) -> Tensor:
    """Per output channel: the std of ``w_noisy - w`` over ``DRAWS`` draws."""
    w = weight.detach().flatten(1)
    dev = torch.stack([noisy_weights(layer, weight, bias) - w for _ in range(DRAWS)])
    return dev.double().transpose(0, 1).flatten(1).std(1).float()


def out_input(weight: Tensor) -> Tensor:
    """The fixed input of the output-noise measurement (inside the input range 1)."""
    g = torch.Generator().manual_seed(7)
    if weight.dim() == 2:
        return (torch.rand(1, weight.shape[1], generator=g) * 2 - 1).expand(20_000, -1).contiguous()
    return (torch.rand(1, weight.shape[1], 8, 8, generator=g) * 2 - 1).expand(2_000, -1, -1, -1).contiguous()


def out_std(noisy: nn.Module, clean: nn.Module, weight: Tensor) -> Tensor:
    """Per output channel: the std of ``y - y_clean`` on the fixed input."""
    x = out_input(weight)
    with torch.no_grad():
        dev = (noisy(x) - clean(x)).double()
    return dev.movedim(1, 0).flatten(1).std(1).float()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------- step 1: prepare (project venv)

def prepare(path: str) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1437], perm[1437:]
    arrays = {"x_test": x[test], "y_test": y[test]}
    for net in ("mlp", "cnn"):
        torch.manual_seed(0)
        model = build(net)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[train]), y[train]).backward()
            opt.step()
        model.eval()
        peak = []  # the input range: max|x| at the inputs of the conv/linear layers on the test set
        hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a: peak.append(a[0].abs().max()))
                 for n in LAYERS[net]]
        print(f"{net}: clean test accuracy {accuracy(model, x[test], y[test]):.4f}")
        for h in hooks:
            h.remove()
        arrays[f"ir_{net}"] = torch.stack(peak).max().reshape(1)
        arrays.update({f"{net}.{k}": v for k, v in model.state_dict().items()})
    save_npz(path, arrays)
    print(f"wrote {path}")


# ---------------------------------------------------------------- step 2: the peer (aihwkit-lightning venv)

def peer_config(setting: str, sigma: float, input_range: float = 1.0):
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig
    from aihwkit_lightning.simulator.parameters.enums import WeightNoiseInjectionType

    rpu = TorchInferenceRPUConfig()
    rpu.mapping.max_input_size = -1  # one tile per layer
    if setting.startswith("w"):
        rpu.modifier.noise_type = (WeightNoiseInjectionType.ADD_NORMAL_PER_CHANNEL if setting == "wpc"
                                   else WeightNoiseInjectionType.ADD_NORMAL)
        rpu.modifier.std_dev = sigma
    else:
        rpu.forward.out_noise = sigma
        rpu.forward.out_noise_per_channel = setting == "opc"
        ir = rpu.pre_post.input_range
        ir.enable, ir.learn_input_range, ir.init_from_data, ir.init_value = True, False, 0, input_range
    return rpu


def peer_model(model: nn.Module, setting: str, sigma: float, input_range: float = 1.0) -> nn.Module:
    from aihwkit_lightning.nn.conversion import convert_to_analog

    analog = convert_to_analog(model, peer_config(setting, sigma, input_range))
    for m in analog.modules():  # a fixed input range, as set (conversion may keep its own initial value)
        if hasattr(m, "input_range") and isinstance(m.input_range, Tensor):
            m.input_range.data.fill_(input_range)
    return analog


def peer_dump(path: str, model_path: str) -> None:
    arrays = load_npz(model_path)
    out: Dict[str, Tensor] = {}
    torch.manual_seed(0)
    for net, layers in LAYERS.items():
        model = load_net(arrays, net)
        for name in layers:
            digital = model.get_submodule(name)
            for setting in SETTINGS:
                sigma = SIGMA_W if setting.startswith("w") else SIGMA_OUT
                layer = peer_model(nn.Sequential(digital), setting, sigma).train()
                if setting.startswith("w"):
                    out[f"std_{setting}_{net}_{name}"] = weight_std(layer, digital.weight, digital.bias)
                else:
                    out[f"std_{setting}_{net}_{name}"] = out_std(layer, digital, digital.weight)
        for setting in SETTINGS:
            sigma = ACC_SIGMA_W if setting.startswith("w") else ACC_SIGMA_OUT
            analog = peer_model(model, setting, sigma, float(arrays[f"ir_{net}"])).train()
            out[f"acc_{setting}_{net}"] = torch.tensor([accuracy(analog, arrays["x_test"], arrays["y_test"])
                                                        for _ in range(REPEATS)])
    save_npz(path, out)
    print(f"wrote {path}")


# ---------------------------------------------------------------- step 3: fxharden (project venv)

def fx_model(model: nn.Module, setting: str, sigma: float, input_range: float = 1.0) -> nn.Module:
    import fxharden
    from fxharden.core.config import HardenConfig, NoiseConfig, SiteKind, WeightNoise
    from fxharden.core.noise import Additive, OutNoise

    if setting.startswith("w"):
        config = HardenConfig(quant=None, weight_noise=(WeightNoise(Additive(of_max=True, per_channel=setting == "wpc"),
                                                        sigma=sigma),))
    else:
        config = HardenConfig(quant=None, noise=NoiseConfig(sigma=sigma, kinds={SiteKind.CONV, SiteKind.LINEAR},
                                                model=OutNoise(per_channel=setting == "opc", input_range=input_range)))
    return fxharden.harden(model, config=config).eval()


def compare(peer_path: str, model_path: str) -> None:
    arrays, peer = load_npz(model_path), load_npz(peer_path)
    torch.manual_seed(0)
    print("std of the noise per output channel, fxharden / aihwkit-lightning "
          f"(weights: {DRAWS} draws; sigma_w={SIGMA_W}, sigma_out={SIGMA_OUT})")
    for net, layers in LAYERS.items():
        model = load_net(arrays, net)
        for name in layers:
            digital = model.get_submodule(name)
            for setting in SETTINGS:
                sigma = SIGMA_W if setting.startswith("w") else SIGMA_OUT
                layer = fx_model(nn.Sequential(digital), setting, sigma)
                if setting.startswith("w"):
                    ours = weight_std(layer, digital.weight, digital.bias)
                    w = digital.weight.detach().flatten(1).abs()
                else:
                    ours = out_std(layer, digital, digital.weight)
                    w = digital.weight.detach().flatten(1).abs()  # input range 1
                ref = sigma * (w.amax(1) if setting.endswith("pc") else w.amax().expand(w.shape[0]))
                ratio = ours / peer[f"std_{setting}_{net}_{name}"]
                print(f"  {net}.{name} {setting}: ratio mean {ratio.mean():.4f} min {ratio.min():.4f} "
                      f"max {ratio.max():.4f}; vs closed form: fxharden {(ours / ref).mean():.4f}, "
                      f"peer {(peer[f'std_{setting}_{net}_{name}'] / ref).mean():.4f}")
    print(f"\naccuracy under noise, {REPEATS} repeats (sigma_w={ACC_SIGMA_W}, sigma_out={ACC_SIGMA_OUT}; "
          "input range = max|x| at the layer inputs)")
    for net in LAYERS:
        model = load_net(arrays, net)
        print(f"  {net}: clean {accuracy(model, arrays['x_test'], arrays['y_test']):.4f}")
        for setting in SETTINGS:
            sigma = ACC_SIGMA_W if setting.startswith("w") else ACC_SIGMA_OUT
            hm = fx_model(model, setting, sigma, float(arrays[f"ir_{net}"]))
            ours = torch.tensor([accuracy(hm, arrays["x_test"], arrays["y_test"]) for _ in range(REPEATS)])
            theirs = peer[f"acc_{setting}_{net}"]
            se = math.sqrt(float(ours.var()) / REPEATS + float(theirs.var()) / REPEATS)
            z = (float(ours.mean()) - float(theirs.mean())) / se if se > 0 else 0.0
            print(f"    {setting}: fxharden {ours.mean():.4f} ± {ours.std():.4f}, aihwkit-lightning "
                  f"{theirs.mean():.4f} ± {theirs.std():.4f}, z = {z:+.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prepare", metavar="MODEL_NPZ")
    g.add_argument("--peer-dump", metavar="PEER_NPZ")
    g.add_argument("--compare", metavar="PEER_NPZ")
    p.add_argument("--model", metavar="MODEL_NPZ", help="the file --prepare wrote")
    a = p.parse_args()
    if a.prepare:
        prepare(a.prepare)
    elif a.peer_dump:
        peer_dump(a.peer_dump, a.model)
    else:
        compare(a.compare, a.model)


if __name__ == "__main__":
    main()
