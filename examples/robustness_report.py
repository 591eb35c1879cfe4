"""Robustness report of a timm model on an image folder: accuracy versus noise, μ, and the plot.

What it shows: a timm model with a local weights file (``load_model("timm:...", weights=...)``),
an image folder decoded once with the model's own preprocessing (``resolve_data``), hardened to
8-bit fake quantization with noise after every layer, swept over noise levels σ by ``sweep``,
which fits the midpoint noise level μ (where accuracy has fallen half way to chance) and
writes ``results.json``, ``results.csv`` and ``accuracy_vs_sigma.png``. The same from the shell:
``fxharden sweep timm:test_resnet --weights w.pth --num-classes 4 --data FOLDER --bits 8``.

The data and weights are stand-ins (``_stand_ins.py``): a 4-class folder of 32x32 images
(CIFAR-10 test images when ``$FXHARDEN_DATA`` is set, else generated) and a ``timm:test_resnet``
trained for a few steps. Replace them with your folder and e.g. ``timm:resnet50`` + its weights.

Run: ``python examples/robustness_report.py [OUT_DIR]`` (default ``example_report``). Expected
output (numbers depend on the data): ``clean accuracy: 0.xx`` (above the 0.25 of chance), one
``sigma ...: accuracy ...`` line per noise level (falling towards 0.25 as σ grows), then
``mu = ...`` (``fit.quote()``: μ ± error when the fit is ok, else a marked crossing, a lower bound
or ``-``, and why) and ``wrote OUT_DIR/results.json OUT_DIR/accuracy_vs_sigma.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _stand_ins import image_folder, stand_in_weights

from fxharden import sweep
from fxharden.measure.plots import save_plots
from fxharden.zoo.folders import resolve_data
from fxharden.zoo.models import load_model

SOURCE, CLASSES, SIZE = "timm:test_resnet", 4, 32


def main(out: Path) -> None:
    folder = image_folder(out / "images", classes=CLASSES, per_class=16)
    weights = stand_in_weights(SOURCE, folder, out / "weights.pth", num_classes=CLASSES, input_size=SIZE)

    lm = load_model(SOURCE, weights=weights, num_classes=CLASSES)  # missing/unexpected keys are errors
    data = resolve_data(folder, preprocess=lm.preprocess.override(input_size=SIZE), workers=0)
    result = sweep(lm.model, data, bits=8, sigmas=(0.03, 0.1, 0.3, 1.0, 3.0), repeats=2, out=out)

    print(f"clean accuracy: {result.clean_accuracy:.3f} (chance {result.chance:.2f}, {result.num_images} images)")
    sigmas, accuracy, _ = result.curve()
    for s, a in zip(sigmas, accuracy):
        print(f"sigma {s:g}: accuracy {a:.3f}")
    quote = result.fit.quote()  # mu only when the fit is ok, else the marked crossing, a lower bound or "-"
    print(f"mu = {quote.text(3)}")
    if not quote.is_mu:
        print(f"  (no fitted mu: {quote.reason})")
    plots = save_plots(result, out)
    print(f"wrote {out / 'results.json'} {plots['accuracy']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_report"))
