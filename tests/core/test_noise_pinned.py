"""Seeded noise outputs pinned: every noise model (activations and weights), eager, in batch
groups (own and shared draws, the CPU lanes) and compiled (``backend="eager"``), give the
very numbers they gave when these literals were recorded. The streams (``stream_seed`` of
base seed and site name, the lanes, the counter-based generator) and the formulas are part of
the contract: a seeded sweep or training run repeats bit for bit across versions.

Each case runs a small model and fingerprints its output: the float64 sum and a few elements
(exact float32 values)."""

import pytest
import torch
from torch import nn

import fxharden
from fxharden import HardenConfig, NoiseConfig, WeightDriftConfig, WeightFaultConfig
from fxharden.core.config import WeightNoiseConfig, WeightNoiseKind
from fxharden.core.noise import Noise

IDX = (0, 7, 100, 133, -1)


def fingerprint(y: torch.Tensor) -> tuple:
    flat = y.detach().flatten()
    return (float(flat.double().sum()),) + tuple(float(flat[i]) for i in IDX)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def inputs(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(1))


def activation(model: str, sigma, draws=None) -> torch.Tensor:
    hm = fxharden.harden(mlp(), config=HardenConfig(quant=None, noise=NoiseConfig(model=model, seed=3))).eval()
    x = inputs()
    if model == "relative":
        fxharden.calibrate_noise(hm, [x])
    fxharden.set_noise(hm, sigma)
    if draws is not None:
        for m in hm.modules():
            if isinstance(m, Noise):
                m.set_sigma(sigma, draws=draws)
    with torch.no_grad():
        return torch.cat([hm(x), hm(x)])  # two calls: the stream moves on


def weights(sigma=None, **cfg) -> torch.Tensor:
    hm = fxharden.harden(mlp(), config=HardenConfig(quant=None, noise=NoiseConfig(seed=5), **cfg)).eval()
    if sigma is not None:
        fxharden.set_weight_noise(hm, sigma)
    with torch.no_grad():
        return torch.cat([hm(inputs()), hm(inputs())])


def module(kind: str, sigma, shape=(4, 8, 16), compiled: bool = False, draws=None) -> torch.Tensor:
    n = Noise("layer.out", seed=7, kind=kind)
    n.set_sigma(sigma, draws=draws)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    if kind == "relative":
        n.set_rms(0.75)
    f = torch.compile(n, backend="eager", fullgraph=True) if compiled else n
    with torch.no_grad():
        return torch.cat([f(x.clone()), f(x.clone())])


CASES = {
    "act-additive": lambda: activation("additive", 0.2),
    "act-relative-calibrated": lambda: activation("relative", 0.1),
    "act-multiplicative": lambda: activation("multiplicative", 0.3),
    "act-additive-groups": lambda: activation("additive", [0.0, 0.1, 0.2, 0.3]),
    "act-multiplicative-groups-shared": lambda: activation("multiplicative", [0.1, 0.2, 0.3, 0.4],
                                                           draws=[0, 0, 1, 1]),
    "w-additive": lambda: weights(weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.ADDITIVE, sigma=0.05)),
    "w-additive-max": lambda: weights(weight_noise=WeightNoiseConfig(kind="additive", sigma=0.05, relative=True)),
    "w-lognormal": lambda: weights(weight_noise=WeightNoiseConfig(kind=WeightNoiseKind.LOGNORMAL, sigma=0.2)),
    "w-chain": lambda: weights(weight_noise=WeightNoiseConfig(kind="additive", sigma=0.05),
                               weight_drift=WeightDriftConfig(sigma_decade=0.1, t=100.0),
                               weight_faults=WeightFaultConfig(p=0.05)),
    "w-additive-groups": lambda: weights([0.05, 0.0, 0.1, 0.05],
                                         weight_noise=WeightNoiseConfig(kind="additive", sigma=0.05)),
    "m-lognormal": lambda: module("lognormal", 0.2),
    "m-stuck": lambda: module("stuck", 0.1),
    "m-relative": lambda: module("relative", 0.2),
    "m-additive-lanes": lambda: module("additive", 0.5, shape=(4, 256, 80)),
    "m-stuck-groups": lambda: module("stuck", [0.1, 0.0, 0.3, 0.2]),
    "m-lognormal-groups-shared": lambda: module("lognormal", [0.1, 0.2, 0.1, 0.3], draws=[0, 1, 0, 1]),
    "c-additive": lambda: module("additive", 0.3, compiled=True),
    "c-relative": lambda: module("relative", 0.2, compiled=True),
    "c-multiplicative": lambda: module("multiplicative", 0.3, compiled=True),
    "c-lognormal": lambda: module("lognormal", 0.2, compiled=True),
    "c-stuck": lambda: module("stuck", 0.1, compiled=True),
    "c-additive-groups-shared": lambda: module("additive", [0.1, 0.2, 0.3, 0.0], compiled=True, draws=[0, 1, 0, 2]),
}

PINNED = {  # recorded with ``python tests/core/test_noise_pinned.py``
    'act-additive': (3.1249862872064114, 0.012266981415450573, 0.40180712938308716, 0.00822814553976059, -0.06594280898571014, -0.4387114346027374),
    'act-relative-calibrated': (-2.503859054442728, -0.05853697285056114, 0.12476688623428345, -0.05313226208090782, -0.202274888753891, -0.13022929430007935),
    'act-multiplicative': (-1.384329226515547, -0.08043663203716278, 0.1090325191617012, -0.0034890659153461456, -0.08292599022388458, -0.03781497851014137),
    'act-additive-groups': (1.517705628357362, -0.059933654963970184, 0.08889178931713104, 0.047431640326976776, -0.6799940466880798, -0.47558149695396423),
    'act-multiplicative-groups-shared': (-0.7731655709212646, -0.06262817978858948, 0.07529237866401672, -0.05606571584939957, -0.26140397787094116, 0.08649779111146927),
    'w-additive': (-0.28963201493024826, 0.047657087445259094, 0.056429196149110794, -0.10020461678504944, -0.3833506405353546, 0.10951890796422958),
    'w-additive-max': (-2.4573995023965836, -0.05306042358279228, 0.0806182473897934, -0.053849928081035614, -0.23379027843475342, -0.08858730643987656),
    'w-lognormal': (-3.6479034861549735, -0.051190972328186035, 0.0985969752073288, -0.056174974888563156, -0.25849056243896484, -0.08508916199207306),
    'w-chain': (-0.14863294921815395, -0.06356043368577957, 0.0179709754884243, 0.0813792496919632, -0.19408822059631348, 0.2526775598526001),
    'w-additive-groups': (-3.1688627637922764, 0.04765709489583969, 0.056429192423820496, -0.040490034967660904, -1.177622675895691, -0.16894586384296417),
    'm-lognormal': (57.194822347242734, -1.4221702814102173, -0.11876180768013, 0.7623682022094727, -0.1832895576953888, 0.5635054707527161),
    'm-stuck': (21.265586162815453, -1.0408011674880981, -0.11883937567472458, 0.8729978799819946, -0.29685506224632263, 0.39096859097480774),
    'm-relative': (37.89271272602491, -0.8066561818122864, -0.11932909488677979, 0.7713702321052551, -0.6584877371788025, 0.6651309728622437),
    'm-additive-lanes': (-596.249356754357, -0.260317862033844, -0.1204717829823494, 0.5342390537261963, -1.502297282218933, -0.37882134318351746),
    'm-stuck-groups': (75.34654985743691, -1.0408011674880981, -0.11883937567472458, 0.8729978799819946, -0.29685506224632263, 0.39096859097480774),
    'm-lognormal-groups-shared': (53.71108746626123, -1.2166333198547363, -0.1188005805015564, 0.8158099055290222, -0.1832895576953888, 0.3820438086986542),
    'c-additive': (39.99943614471704, -1.0926594734191895, -0.46787160634994507, 0.6038633584976196, -0.21271538734436035, 0.250255823135376),
    'c-relative': (42.09828438423574, -1.0667303800582886, -0.2933554947376251, 0.7384306192398071, -0.2547852396965027, 0.32061219215393066),
    'c-multiplicative': (48.75729351644986, -0.9868269562721252, -0.077360600233078, 0.638043999671936, -0.3218323588371277, 0.33595430850982666),
    'c-lognormal': (48.471372300278745, -1.0054333209991455, -0.09416839480400085, 0.7296099662780762, -0.31398245692253113, 0.3559601306915283),
    'c-stuck': (8.822411133471178, 0.0, -0.11883937567472458, 0.8729978799819946, -0.29685506224632263, 0.39096859097480774),
    'c-additive-groups-shared': (37.840464405948296, -1.0580872297286987, -0.235183447599411, 0.7832863926887512, -0.24076195061206818, 0.39096859097480774),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("case", list(CASES))
def test_seeded_output_is_unchanged(case):
    got = fingerprint(CASES[case]())
    want = PINNED[case]
    assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-9)
    assert got[1:] == want[1:]


if __name__ == "__main__":  # prints the table above from the code at hand
    for name, make in CASES.items():
        torch._dynamo.reset()
        print(f"    {name!r}: {fingerprint(make())!r},")
