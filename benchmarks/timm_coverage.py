"""Harden every model in timm's registry and report what happened.

For each name: build it (random weights, 10 classes; models above --max-params are counted
on the meta device and skipped as too large for this machine), harden it noise-only, check
that sigma 0 reproduces the eager output exactly on one input, and record sites, opaque
parts and time. Prints a summary and writes a CSV.

Run:  python benchmarks/timm_coverage.py [--filter 'resnet*'] [--max-params 60e6] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings

import timm
import torch

import fxharden


def count_params_meta(name: str) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=10)
    return sum(p.numel() for p in model.parameters())


def check(name: str, max_params: float) -> dict:
    row = {"model": name, "status": "", "sites": "", "opaque": "", "seconds": ""}
    t0 = time.perf_counter()
    try:
        n = count_params_meta(name)
    except Exception as err:  # noqa: BLE001 - report every failure
        n = 0
        row["note"] = f"meta build failed: {type(err).__name__}"
    if n > max_params:
        row["status"] = "skipped-size"
        return row
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        x = torch.randn(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))
        with torch.no_grad():
            ref = model(x)
    except Exception as err:  # noqa: BLE001
        row["status"] = f"not-buildable: {type(err).__name__}"
        return row
    try:
        hm = fxharden.harden(model, bits=None)
        with torch.no_grad():
            out = hm(x)
        rep = fxharden.harden_report(hm)
        row["sites"] = len(rep.noise_sites)
        row["opaque"] = ";".join(rep.opaque)
        same = torch.equal(out, ref) if isinstance(out, torch.Tensor) else True
        row["status"] = "hardened" if same else "hardened-output-differs"
    except Exception as err:  # noqa: BLE001
        row["status"] = f"REFUSED: {type(err).__name__}: {str(err)[:120]}"
    row["seconds"] = f"{time.perf_counter() - t0:.1f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filter", default="*")
    parser.add_argument("--max-params", type=float, default=60e6)
    parser.add_argument("--csv", default="timm_coverage.csv")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = timm.list_models(args.filter)
    rows = []
    for i, name in enumerate(names):
        rows.append(check(name, args.max_params))
        print(f"[{i + 1}/{len(names)}] {name}: {rows[-1]['status']} sites={rows[-1]['sites']} "
              f"opaque={rows[-1]['opaque']}", flush=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "status", "sites", "opaque", "seconds", "note"])
        writer.writeheader()
        writer.writerows(rows)
    summary: dict = {}
    for r in rows:
        key = r["status"].split(":")[0]
        summary[key] = summary.get(key, 0) + 1
    print("summary:", summary)


if __name__ == "__main__":
    main()
