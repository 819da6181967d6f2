"""Named dataset sizes for the synthetic generator.

`preliminary` and `final` are the real competition's sizes (docs/data-format.md). Photo counts
are targets for the number of distinct photos shown; the generator sizes its candidate pool so
the shown count lands close to them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SizeSpec:
    name: str
    n_users: int
    n_train_photos: int
    n_test_photos: int
    n_train_rows: int
    n_test_rows: int
    vocab_size: int
    vector_dim: int = 2048
    n_topics: int = 40
    n_subtopics: int = 6
    # users generated per block: bounds the generator's memory whatever the size
    users_per_block: int = 1000

    def with_vector_dim(self, dim: int) -> "SizeSpec":
        return replace(self, vector_dim=dim)


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec("tiny", 120, 4_000, 1_000, 48_000, 7_500, 8_000, users_per_block=60),
    "small": SizeSpec("small", 500, 41_500, 8_500, 540_000, 85_000, 30_000, users_per_block=250),
    # the "default size" of an independent dataset: demo's users with a quarter of the rows
    "default": SizeSpec("default", 2_000, 100_000, 25_000, 606_000, 151_000, 60_000, users_per_block=500),
    "demo": SizeSpec("demo", 2_000, 166_000, 34_000, 2_160_000, 340_000, 60_000, users_per_block=500),
    "preliminary": SizeSpec(
        "preliminary", 15_140, 4_278_686, 895_846, 20_854_340, 3_291_332, 233_000
    ),
    "final": SizeSpec("final", 37_821, 7_560_366, 1_643_866, 52_134_536, 8_180_616, 233_000),
}


def get_size(name: str) -> SizeSpec:
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"Unknown size {name!r}; choose one of {', '.join(SIZES)}") from None
