"""python -m kuai_assets.synth --size demo [--world NAME] --out data/demo (also `kuai generate`)"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kuai_assets.synth.generate import generate
from kuai_assets.synth.sizes import SIZES, get_size
from kuai_assets.synth.world import WORLDS

DESCRIPTION = "Write a synthetic dataset in the released Kuaishou layout, with a ground truth."


def worlds_help() -> str:
    """The generative stories, one line each (the parsers' epilog)."""
    return "worlds:\n" + "\n".join(f"  {w.name}: {w.summary}" for w in WORLDS.values())


def add_arguments(parser: argparse.ArgumentParser, size_choices: bool = True) -> None:
    """The generator's options, declared once for `python -m kuai_assets.synth` and `kuai generate`
    (which checks the size itself, to name the sizes in its one-line message: size_choices=False)."""
    parser.add_argument("--size", choices=list(SIZES) if size_choices else None, default="demo",
                        help=f"how large: {', '.join(SIZES)} (kuai_assets/synth/sizes.py; default demo)")
    parser.add_argument("--world", choices=list(WORLDS), default="demo", help="the generative story (see below; default demo)")
    parser.add_argument("--seed", type=int, default=7, help="the random seed (default 7)")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--vector-dim", type=int, default=None, help="visual vector length (default 2048)")
    parser.add_argument("--visual-format", choices=["zip", "folder"], default="zip",
                        help="one .npy per photo, zipped as released, or unzipped in a folder (default zip)")
    parser.add_argument("--zip-compression", choices=["stored", "deflated"], default="stored",
                        help="the zips' compression (default stored)")
    parser.add_argument("--visual-prefix", choices=["final_visual", "preliminary_visual"], default="final_visual",
                        help="the vector files' name prefix, as in the final or the preliminary round (default final_visual)")


def write_dataset(args: argparse.Namespace) -> int:
    """Generate the dataset `args` describe; print its summary (size, world, seed, counts, oracle AUC)."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kuai_assets.synth",
        description=DESCRIPTION,
        epilog=worlds_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return write_dataset(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
