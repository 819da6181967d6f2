"""Visual: every photo's 2048-d cover vector, reduced by PCA, grouped by KMeans."""


import time

import dagster as dg
import numpy as np
from pydantic import Field

from kuai_assets.defs.metadata import clear_failures, image, table_metadata
from kuai_assets.defs.raw import raw_interactions
from kuai_assets.defs.resources import KuaiResource
from kuai_assets.formats import layout
from kuai_assets.formats.released import DataFormatError
from kuai_assets.vectors import VectorStore, cluster_vectors, consolidate, read_reduced, reduce_vectors

GROUP = "visual"


class EmbeddingsConfig(dg.Config):
    encoding: str = Field(
        default="bfloat16",
        description="How the store keeps each value: bfloat16 (default: half the bytes of float32, same range, "
        "converts at memory speed), float16, or float32 (every bit).",
    )


@dg.asset(group_name=GROUP, kinds={"python", "numpy"}, deps=[raw_interactions], code_version="1")
def video_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingsConfig, kuai: KuaiResource
) -> dg.MaterializeResult:
    """Every train and test photo's visual vector, consolidated into one memory-mapped matrix.

    Reads final_visual_{train,test}.zip (or the unzipped folders, or the preliminary names) in
    large sequential blocks, never holding more than two blocks in memory, and writes
    stores/video_embeddings/{vectors.npy (bfloat16 by default), photo_id.npy, split.npy}. Stops with the photo_id for a
    vector that is missing, of the wrong shape, not a .npy array, or holds NaN/infinity.
    """
    with clear_failures("video_embeddings"):
        root = kuai.dataset(context.log)
        work = kuai.work()
        sources = {split: layout.find_visual_source_checked(root, split) for split in layout.SPLITS}
        con = work.connect(["raw_interactions"])
        needed = con.execute("select distinct photo_id, split from raw_interactions").fetchnumpy()
        con.close()
        with work.writing_store("video_embeddings") as out:
            meta = consolidate(sources, out, config.encoding, progress=context.log.info)
            photo_ids = np.load(out / "photo_id.npy")
            covered = np.isin(needed["photo_id"], photo_ids)
            if not covered.all():
                missing = needed["photo_id"][~covered]
                split = needed["split"][~covered][0]
                raise DataFormatError(
                    sources[split].path,
                    f"{len(missing)} photo(s) in the interactions have no vector, e.g. photo_id "
                    f"{', '.join(map(str, missing[:5].tolist()))}",
                    photo_id=int(missing[0]),
                )
            extra = int((~np.isin(photo_ids, needed["photo_id"])).sum())
    gigabytes = meta["bytes"] / 1e9
    return dg.MaterializeResult(
        metadata={
            "vectors": dg.MetadataValue.int(meta["vectors"]),
            "dimensions": dg.MetadataValue.int(meta["dim"]),
            "encoding": meta["encoding"],
            "store_gb": dg.MetadataValue.float(round(gigabytes, 3)),
            "seconds": dg.MetadataValue.float(meta["seconds"]),
            "source_mb_per_second": dg.MetadataValue.float(meta["source_megabytes_per_second"] or 0.0),
            "vectors_for_photos_not_in_interactions (kept)": dg.MetadataValue.int(extra),
            "sources": dg.MetadataValue.json(meta["sources"]),
            "path": dg.MetadataValue.path(str(work.store_path("video_embeddings"))),
        }
    )


class PcaConfig(dg.Config):
    dimensions: int = Field(default=64, description="Principal components kept (pc_00, pc_01, ...).")
    fit_sample: int = Field(
        default=50_000, description="Vectors sampled to fit the PCA (train and test alike; no labels)."
    )
    seed: int = Field(default=0, description="Seed of the fitting sample.")


@dg.asset(group_name=GROUP, kinds={"python", "numpy"}, deps=[video_embeddings], code_version="2")
def pca_visual_features(
    context: dg.AssetExecutionContext, config: PcaConfig, kuai: KuaiResource
) -> dg.MaterializeResult:
    """The photo vectors reduced by PCA (64 dimensions by default), one row per photo.

    Unsupervised and fitted on train and test photos alike, on a random sample; every vector is
    then projected in streamed blocks.
    """
    with clear_failures("pca_visual_features"):
        work = kuai.work()
        store = VectorStore.open(work.require_store("video_embeddings"))
        started = time.time()
        with work.writing_table("pca_visual_features") as tmp:
            model = reduce_vectors(store, tmp, config.dimensions, config.fit_sample, config.seed, context.log.info)
    from kuai_assets.ml import plots

    ratio = model.explained_variance_ratio
    cumulative = np.cumsum(ratio)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(work.table_path("pca_visual_features")),
            "explained_variance_total": dg.MetadataValue.float(round(float(cumulative[-1]), 4)),
            "explained_variance_first_10": dg.MetadataValue.json([round(float(v), 4) for v in ratio[:10]]),
            "explained_variance_chart": image(
                plots.line_png(list(cumulative), "PCA: cumulative explained variance", "components", "share of variance"),
                "cumulative explained variance",
            ),
            "fitted_on_vectors": dg.MetadataValue.int(model.fitted_on),
            "seconds": dg.MetadataValue.float(round(time.time() - started, 1)),
        }
    )


class ClusterConfig(dg.Config):
    ks: list[int] = Field(
        default=[100, 500], description="Numbers of clusters; the published top-10 solution used 100 and 500."
    )
    sample_fraction: float = Field(
        default=0.1, description="Share of photos the KMeans is fitted on (at least 50 per cluster); all are assigned."
    )
    max_sample_per_cluster: int = Field(
        default=256, description="At most this many fit photos per cluster (more only costs time)."
    )
    seed: int = Field(default=0, description="Seed of the sample and of k-means++.")


@dg.asset(group_name=GROUP, kinds={"python", "numpy"}, deps=[pca_visual_features], code_version="2")
def video_clusters(context: dg.AssetExecutionContext, config: ClusterConfig, kuai: KuaiResource) -> dg.MaterializeResult:
    """KMeans clusters of the reduced photo vectors at every k: one row per (photo_id, k)."""
    with clear_failures("video_clusters"):
        work = kuai.work()
        photo_id, reduced = read_reduced(work.require_table("pca_visual_features"))
        started = time.time()
        with work.writing_table("video_clusters") as tmp:
            models = cluster_vectors(
                photo_id,
                reduced,
                sorted(set(config.ks)),
                tmp,
                config.sample_fraction,
                config.seed,
                context.log.info,
                max_sample_per_cluster=config.max_sample_per_cluster,
            )
    from kuai_assets.ml import plots

    metadata = {**table_metadata(work.table_path("video_clusters"))}
    for k, (model, sizes) in models.items():
        metadata[f"k{k}_cluster_sizes"] = dg.MetadataValue.json(
            {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()), "empty": int((sizes == 0).sum())}
        )
        metadata[f"k{k}_size_histogram"] = image(
            plots.histogram_png(sizes, f"k={k}: photos per cluster", "photos in cluster"), f"cluster sizes k={k}"
        )
        metadata[f"k{k}_inertia"] = dg.MetadataValue.float(round(model.inertia, 4))
    metadata["seconds"] = dg.MetadataValue.float(round(time.time() - started, 1))
    return dg.MaterializeResult(metadata=metadata)
