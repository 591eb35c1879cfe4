"""Harden every model in timm's registry and report what happened.

For each name: build it (random weights, 10 classes; models above --max-params are counted
on the meta device and skipped as too large for this machine), harden it noise-only, check
that sigma 0 reproduces the eager output exactly on one input, and record sites, opaque
parts and time. Prints a summary and writes a CSV. ``--frontend export`` hardens through
torch.export instead of torch.fx (``example_inputs`` = the input) and also records how its noise
sites differ from torch.fx's (names in one only; see the README for the documented mapping).

Run:  python benchmarks/timm_coverage.py [--filter 'resnet*'] [--max-params 60e6] [--csv out.csv]
          [--frontend fx|export]
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


def check(name: str, max_params: float, frontend: str = "fx") -> dict:
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
        hm = fxharden.harden(model, bits=None, frontend=frontend, example_inputs=(x,))
        with torch.no_grad():
            out = hm(x)
        rep = fxharden.harden_report(hm)
        if frontend == "export":
            fx_sites = set(fxharden.noise_sites(fxharden.harden(model, bits=None, frontend="fx")))
            mine = set(rep.noise_sites)
            row["only_fx"] = ";".join(sorted(fx_sites - mine))
            row["only_export"] = ";".join(sorted(mine - fx_sites))
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
    parser.add_argument("--frontend", choices=("fx", "export"), default="fx")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = timm.list_models(args.filter)
    rows = []
    for i, name in enumerate(names):
        rows.append(check(name, args.max_params, args.frontend))
        diff = (f" only-fx={len(rows[-1]['only_fx'].split(';')) if rows[-1].get('only_fx') else 0}"
                f" only-export={len(rows[-1]['only_export'].split(';')) if rows[-1].get('only_export') else 0}"
                if args.frontend == "export" else "")
        print(f"[{i + 1}/{len(names)}] {name}: {rows[-1]['status']} sites={rows[-1]['sites']} "
              f"opaque={rows[-1]['opaque']}{diff}", flush=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "status", "sites", "opaque", "seconds", "note", "only_fx",
                                               "only_export"])
        writer.writeheader()
        writer.writerows(rows)
    summary: dict = {}
    for r in rows:
        key = r["status"].split(":")[0]
        summary[key] = summary.get(key, 0) + 1
    print("summary:", summary)


if __name__ == "__main__":
    main()
