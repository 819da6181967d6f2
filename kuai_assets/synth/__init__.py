"""Synthetic datasets in the released Kuaishou layout, with a known ground truth."""

from kuai_assets.synth.generate import generate
from kuai_assets.synth.sizes import SIZES, SizeSpec, get_size

__all__ = ["generate", "SIZES", "SizeSpec", "get_size"]
