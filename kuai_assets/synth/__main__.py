"""python -m kuai_assets.synth --size demo [--world NAME] --out data/demo"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kuai_assets.synth.generate import generate
from kuai_assets.synth.sizes import SIZES, get_size
from kuai_assets.synth.world import WORLDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kuai_assets.synth",
        description="Write a synthetic dataset in the released Kuaishou layout, with a ground truth.",
        epilog="worlds:\n" + "\n".join(f"  {w.name}: {w.summary}" for w in WORLDS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=list(SIZES), default="demo")
    parser.add_argument("--world", choices=list(WORLDS), default="demo", help="the generative story (see below)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--vector-dim", type=int, default=None, help="visual vector length (default 2048)")
    parser.add_argument("--visual-format", choices=["zip", "folder"], default="zip")
    parser.add_argument("--zip-compression", choices=["stored", "deflated"], default="stored")
    parser.add_argument("--visual-prefix", choices=["final_visual", "preliminary_visual"], default="final_visual")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = get_size(args.size)
    if args.vector_dim:
        spec = spec.with_vector_dim(args.vector_dim)
    summary = generate(
        args.out,
        spec,
        seed=args.seed,
        visual_format=args.visual_format,
        zip_compression=args.zip_compression,
        visual_prefix=args.visual_prefix,
        world=args.world,
    )
    json.dump({k: summary[k] for k in ("size", "world", "seed", "counts", "oracle_auc", "seconds")}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
