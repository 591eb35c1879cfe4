"""Per-layer (walking-noise) profile of a torchvision model, with its plot.

What it shows: a torchvision model with a local weights file (``load_model("torchvision:...",
weights=...)``; ``weights="DEFAULT"`` would take torchvision's own), its preprocessing taken from
the torchvision weights' ``transforms()`` and overridden to a small input size, and
``sweep(mode="per_layer")``: noise at one layer at a time, a μ per layer. Layers with a small μ
are the ones that break first under noise; ``ranking()`` sorts them, ``per_layer.png`` shows
them. The same from the shell: ``fxharden sweep torchvision:squeezenet1_1 --weights w.pth
--num-classes 4 --data FOLDER --mode per-layer``.

Stand-ins (``_stand_ins.py``): a 4-class folder of 32x32 images and ``squeezenet1_1`` trained for
a few steps, in place of your data and a downloaded checkpoint.

Run: ``python examples/per_layer_profile.py [OUT_DIR]`` (default ``example_per_layer``).
Expected output: ``clean accuracy: 0.xx``, ``N layers measured``, the five most sensitive layers
as ``<layer>: mu = ...`` (smallest μ first; ``fit.quote()``: μ only where its fit is ok, else a
marked crossing or lower bound), then ``wrote OUT_DIR/per_layer_mu.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _stand_ins import image_folder, stand_in_weights

from fxharden import sweep
from fxharden.measure.plots import save_plots
from fxharden.zoo.folders import resolve_data
from fxharden.zoo.models import load_model

SOURCE, CLASSES, SIZE = "torchvision:squeezenet1_1", 4, 32


def main(out: Path) -> None:
    folder = image_folder(out / "images", classes=CLASSES, per_class=8)
    weights = stand_in_weights(SOURCE, folder, out / "weights.pth", num_classes=CLASSES, input_size=SIZE,
                               steps=20, lr=1e-3)

    lm = load_model(SOURCE, weights=weights, num_classes=CLASSES)
    data = resolve_data(folder, preprocess=lm.preprocess.override(input_size=SIZE, crop_pct=1.0), workers=0)
    result = sweep(lm.model, data, mode="per_layer", sigmas=(0.5, 2.0, 8.0, 32.0), repeats=1, out=out)

    print(f"clean accuracy: {result.clean_accuracy:.3f} (chance {result.chance:.2f})")
    print(f"{len(result.per_site)} layers measured")
    for site, fit in result.ranking()[:5]:
        print(f"{site}: mu = {fit.quote().text(3)}")  # mu only if the fit is ok, else what stands for it
    plots = save_plots(result, out)
    print(f"wrote {plots['per_layer']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_per_layer"))
