"""fxharden's converters against aihwkit-lightning's: one Linear and one Conv2d with fixed
weights, the peer's DAC (``inp_res``, a fixed input range) and ADC (``out_res``,
``out_bound``, after the bias-free product), and the fxharden settings that reproduce them:

    inp_res = 1/(2^8 - 2), input range r   ->  dac=ConverterConfig(levels=255, bound=r)
    out_res = 1/(2^8 - 2), out_bound o     ->  adc=ConverterConfig(levels=255, before_bias=True,
                                                   bounds={layer: r * o * max|W|})

Prints, per layer, the largest |difference| of the outputs (also in ADC steps) and the
fraction of outputs that are bit-identical.

With aihwkit-lightning importable in this interpreter:
    python benchmarks/aihwkit_converters.py
Otherwise in two steps (the peer in its own environment, fxharden in the project's):
    <aihwkit-lightning venv>/bin/python benchmarks/aihwkit_converters.py --peer-dump out.npz
    python benchmarks/aihwkit_converters.py --compare out.npz
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import numpy as np

INPUT_RANGE = 1.5
OUT_BOUND = 2.0
RES = 1 / (2**8 - 2)


def data() -> dict:
    """Fixed weights and inputs (numpy, so both environments see the very same numbers)."""
    rng = np.random.RandomState(0)
    return {
        "lin_w": rng.uniform(-0.25, 0.25, (8, 16)).astype(np.float32),
        "lin_b": rng.uniform(-0.5, 0.5, 8).astype(np.float32),
        "lin_x": (rng.randn(64, 16) * 0.8).astype(np.float32),
        "conv_w": rng.uniform(-0.2, 0.2, (4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.uniform(-0.5, 0.5, 4).astype(np.float32),
        "conv_x": (rng.randn(4, 3, 8, 8) * 0.8).astype(np.float32),
    }


def peer_outputs(d: dict) -> dict:
    """The peer's outputs (eval mode: no noise, no range update)."""
    import torch
    from aihwkit_lightning.nn import AnalogConv2d, AnalogLinear
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig

    cfg = TorchInferenceRPUConfig()
    cfg.forward.inp_res = RES
    cfg.forward.out_res = RES
    cfg.forward.out_bound = OUT_BOUND
    cfg.pre_post.input_range.enable = True
    cfg.pre_post.input_range.learn_input_range = False
    cfg.pre_post.input_range.init_from_data = 0
    cfg.pre_post.input_range.init_value = INPUT_RANGE
    out = {}
    for name, layer in (("lin", AnalogLinear(16, 8, rpu_config=cfg)), ("conv", AnalogConv2d(3, 4, 3, rpu_config=cfg))):
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(d[f"{name}_w"]))
            layer.bias.copy_(torch.from_numpy(d[f"{name}_b"]))
            out[f"{name}_peer"] = layer.eval()(torch.from_numpy(d[f"{name}_x"])).numpy()
    return out


def fxharden_outputs(d: dict) -> dict:
    """fxharden's outputs with the settings of the module docstring."""
    import torch
    from torch import nn

    import fxharden
    from fxharden import ConverterConfig, HardenConfig

    levels = round(1 / RES) + 1  # 254 steps between -r and r: 255 levels
    out = {}
    for name, layer in (("lin", nn.Linear(16, 8)), ("conv", nn.Conv2d(3, 4, 3))):
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(d[f"{name}_w"]))
            layer.bias.copy_(torch.from_numpy(d[f"{name}_b"]))
        adc_bound = INPUT_RANGE * OUT_BOUND * float(np.abs(d[f"{name}_w"]).max())
        cfg = HardenConfig(quant=None, dac=ConverterConfig(levels=levels, bound=INPUT_RANGE),
                           adc=ConverterConfig(levels=levels, bounds={"0": adc_bound}, before_bias=True))
        hm = fxharden.harden(nn.Sequential(layer).eval(), config=cfg)
        with torch.no_grad():
            out[f"{name}_fx"] = hm(torch.from_numpy(d[f"{name}_x"])).numpy()
        out[f"{name}_step"] = np.float32(adc_bound / ((levels - 1) // 2))
    return out


def float_outputs(d: dict) -> dict:
    """The layers without converters (to show that the converters act on these data)."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v) for k, v in d.items()}
    return {"lin": F.linear(t["lin_x"], t["lin_w"], t["lin_b"]).numpy(),
            "conv": F.conv2d(t["conv_x"], t["conv_w"], t["conv_b"]).numpy()}


def compare(d: dict, peer: dict) -> None:
    ours, plain = fxharden_outputs(d), float_outputs(d)
    print(f"inp_res = out_res = 1/{round(1 / RES)}, input range {INPUT_RANGE}, out_bound {OUT_BOUND}")
    for name, title in (("lin", "Linear(16, 8), 64 inputs"), ("conv", "Conv2d(3, 4, 3), 4x3x8x8 input")):
        a, b = ours[f"{name}_fx"], peer[f"{name}_peer"]
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        same = float(np.mean(a == b))
        print(f"{title}: {a.size} outputs, max |difference| {diff.max():.3g} ({diff.max() / ours[f'{name}_step']:.3g} "
              f"ADC steps), bit-identical {same:.2%}; the converters moved the float outputs by up to "
              f"{np.abs(b - plain[name]).max():.3g}, DAC clipped {np.mean(np.abs(d[f'{name}_x']) > INPUT_RANGE):.1%} "
              f"of the inputs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-dump", metavar="NPZ", help="run the peer only and write its inputs, weights, outputs")
    parser.add_argument("--compare", metavar="NPZ", help="compare fxharden with a dump written by --peer-dump")
    args = parser.parse_args()
    if args.peer_dump:
        d = data()
        np.savez(args.peer_dump, **d, **peer_outputs(d))
        print(f"wrote {args.peer_dump}")
    elif args.compare:
        with np.load(args.compare) as z:
            saved = dict(z)
        compare({k: v for k, v in saved.items() if not k.endswith("_peer")}, saved)
    elif importlib.util.find_spec("aihwkit_lightning") is not None:
        d = data()
        compare(d, peer_outputs(d))
    else:
        sys.exit("aihwkit_lightning is not importable here: run --peer-dump out.npz with its interpreter, then "
                 "--compare out.npz with this one (see the module docstring)")


if __name__ == "__main__":
    main()
