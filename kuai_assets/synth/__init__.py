"""Synthetic datasets in the released Kuaishou layout, with a known ground truth."""

from kuai_assets.synth.generate import generate, generate_if_absent
from kuai_assets.synth.sizes import SIZES, SizeSpec, get_size
from kuai_assets.synth.world import WORLDS, World, get_world

__all__ = ["generate", "generate_if_absent", "SIZES", "SizeSpec", "get_size", "WORLDS", "World", "get_world"]
