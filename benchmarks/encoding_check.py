"""Does the store's encoding change the PCA and the clusters? `python -m benchmarks.encoding_check --data DIR` (from the repo root).

The visual stage rounds every vector to the store's encoding (bfloat16 by default) before it fits
and projects, so that the PCA and clusters made in the pass are the ones a later run would make
from the store. This measures what that rounding costs: it makes the PCA and the clusters (no
store written) once from the released float32 values and once per encoding asked for, with the
same settings and fitting rows, and prints how far each is from float32:

- PCA: the cosine between each principal axis and float32's (the smallest over the axes), the
  RMS difference of the reduced vectors over their RMS, and the variance the axes keep;
- clusters, per k: the adjusted Rand index against float32's labels (1: the same grouping), the
  share of photos in the float32 cluster that most of their cluster went to, and the clustering's
  mean squared distance of every photo to its centre over float32's (its quality).

KMeans lands in another local optimum after the slightest change (one k-means++ draw going the
other way changes every centre after it), so the same figures are printed for float32 run with
the next seed: what an arbitrary choice alone moves. An encoding whose figures are no further from
float32 than that makes clusters as good and as alike as float32's own.

Results go to stdout and to `<work>/encoding_check.json`; the tables it made are deleted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from kuai_assets.settings import default_work_dir
from kuai_assets.formats import layout
from kuai_assets.ml.metrics import adjusted_rand_index, matched_share
from kuai_assets.visual.codec import ENCODINGS
from kuai_assets.visual.projection import read_reduced
from kuai_assets.visual.settings import VisualSettings
from kuai_assets.visual.sources import Released
from kuai_assets.visual.stage import VisualStage


def make(data: Path, out: Path, settings: VisualSettings) -> dict:
    """The stage's PCA and clusters at `settings` (no store): model, photo_id, reduced vectors, labels by k."""
    out.mkdir(parents=True, exist_ok=True)
    sources = {split: layout.find_visual_source_checked(data, split) for split in layout.SPLITS}
    started = time.time()
    made = VisualStage(settings).run(Released(sources), pca_out=out / "pca.parquet", clusters_out=out / "clusters.parquet")
    seconds = time.time() - started
    photo_id, reduced = read_reduced(out / "pca.parquet")
    clusters = pq.read_table(out / "clusters.parquet").to_pandas()
    order = np.argsort(photo_id, kind="stable")
    reduced = reduced[order]
    labels, spread = {}, {}
    for k, group in clusters.groupby("k"):
        labels[int(k)] = group.sort_values("photo_id", kind="stable")["cluster"].to_numpy()
        centers = made["clusters"][int(k)][0].centers
        spread[int(k)] = sum(  # mean squared distance to the centre, in blocks of photos
            float(((reduced[i : i + 65_536] - centers[labels[int(k)][i : i + 65_536]]).astype(np.float64) ** 2).sum())
            for i in range(0, len(reduced), 65_536)
        ) / len(reduced)
    return {"pca": made["pca"], "photo_id": photo_id[order], "reduced": reduced, "labels": labels, "spread": spread, "seconds": seconds}


def compare(reference: dict, other: dict) -> dict:
    """How far `other` (an encoding) is from `reference` (float32): figures as in the module docstring."""
    if not np.array_equal(reference["photo_id"], other["photo_id"]):
        raise ValueError("the two runs hold different photos")
    axes = np.abs(np.sum(reference["pca"].components.astype(np.float64) * other["pca"].components, axis=1))
    squared_difference = squared = 0.0
    for i in range(0, len(reference["reduced"]), 65_536):  # in blocks: no float64 copy of the tables
        ours = reference["reduced"][i : i + 65_536].astype(np.float64)
        squared_difference += float(((other["reduced"][i : i + 65_536] - ours) ** 2).sum())
        squared += float((ours**2).sum())
    return {
        "smallest_axis_cosine": float(axes.min()),
        "reduced_rms_difference_over_rms": float(np.sqrt(squared_difference / squared)),
        "variance_kept": float(other["pca"].explained_variance_ratio.sum()),
        "variance_kept_float32": float(reference["pca"].explained_variance_ratio.sum()),
        "clusters": {
            k: {
                "adjusted_rand_index": adjusted_rand_index(reference["labels"][k], other["labels"][k]),
                "matched_share": matched_share(other["labels"][k], reference["labels"][k]),
                "spread_over_float32": other["spread"][k] / reference["spread"][k],
            }
            for k in reference["labels"]
        },
        "seconds": round(other["seconds"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoding_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset in the released layout")
    parser.add_argument("--work", help="where the tables are made, then deleted (default: .kuai/encoding_check)")
    parser.add_argument("--encodings", default="bfloat16,float16", help="compared with float32 (default: bfloat16,float16)")
    parser.add_argument("--dimensions", type=int, default=VisualSettings.dimensions)
    parser.add_argument("--ks", default=",".join(map(str, VisualSettings.ks)))
    parser.add_argument("--seed", type=int, default=VisualSettings.seed)
    args = parser.parse_args(argv)
    data = Path(args.data)
    work = Path(args.work) if args.work else default_work_dir() / "encoding_check"
    encodings = [e for e in args.encodings.split(",") if e]
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        parser.error(f"unknown encoding {unknown[0]!r}: one of {', '.join(ENCODINGS)}")

    def visual_settings(encoding: str, seed: int = args.seed) -> VisualSettings:
        return VisualSettings(encoding=encoding, dimensions=args.dimensions, ks=tuple(int(k) for k in args.ks.split(",")), seed=seed)

    results: dict = {"data": str(data), "dimensions": args.dimensions, "ks": args.ks, "encodings": {}}
    try:
        reference = make(data, work / "float32", visual_settings("float32"))
        results["float32_seconds"] = round(reference["seconds"], 1)
        print(f"[encoding_check] float32: {len(reference['photo_id']):,} photos in {reference['seconds']:.1f} s", flush=True)
        runs = [(f"float32 seed {args.seed + 1}", "float32", args.seed + 1)] + [(e, e, args.seed) for e in encodings]
        for name, encoding, seed in runs:
            figures = compare(reference, make(data, work / "other", visual_settings(encoding, seed)))
            results["encodings"][name] = figures
            shutil.rmtree(work / "other")
            clusters = "; ".join(
                f"k={k}: adjusted Rand {c['adjusted_rand_index']:.4f}, photos in the matched cluster {c['matched_share']:.2%}, "
                f"mean squared distance to the centre x{c['spread_over_float32']:.4f}"
                for k, c in figures["clusters"].items()
            )
            print(
                f"[encoding_check] {name} against float32 seed {args.seed}: smallest principal-axis cosine "
                f"{figures['smallest_axis_cosine']:.6f}, reduced vectors' RMS difference {figures['reduced_rms_difference_over_rms']:.2e} "
                f"of their RMS, variance kept {figures['variance_kept']:.4f} (float32 {figures['variance_kept_float32']:.4f}); "
                f"{clusters} ({figures['seconds']} s)",
                flush=True,
            )
    finally:
        for made in ("float32", "other"):
            shutil.rmtree(work / made, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "encoding_check.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
