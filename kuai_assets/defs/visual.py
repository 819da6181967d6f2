"""Visual: every photo's 2048-d cover vector, reduced by PCA, grouped by KMeans.

The three assets are made by one step (`visual_stage`, a multi-asset): each vector is read once,
from the released files, and in the same pass written to the store, projected on the PCA axes
and assigned its clusters (see kuai_assets.visual.stage). Any one of them can still be materialized on
its own: the PCA and clusters then read the store (or the PCA table) instead.
"""


import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from kuai_assets.defs.factory import modules_version
from kuai_assets.defs.metadata import clear_failures, image, table_metadata
from kuai_assets.defs.resources import WorkspaceResource
from kuai_assets.formats import layout
from kuai_assets.formats import visual as formats_visual
from kuai_assets.formats import visual_zip
from kuai_assets.formats.released import DataFormatError
from kuai_assets.ml import kmeans, pca
from kuai_assets.visual import (
    codec,
    distributed,
    flow,
    projection,
    sampling,
    settings as visual_settings,
    sources,
    stage,
    store,
)
from kuai_assets.visual.settings import VisualSettings
from kuai_assets.visual.sources import Released
from kuai_assets.visual.stage import VisualStage
from kuai_assets.visual.store import VectorStore

GROUP = "visual"


class VisualConfig(dg.Config):
    encoding: str = Field(
        default="bfloat16",
        description="video_embeddings: how the store keeps each value: bfloat16 (default: half the bytes of float32, "
        "same range, converts at memory speed), float16, or float32 (every bit).",
    )
    dimensions: int = Field(default=64, description="pca_visual_features: principal components kept (pc_00, pc_01, ...).")
    fit_sample: int = Field(
        default=50_000,
        description="pca_visual_features: vectors the PCA is fitted on (train and test alike; no labels), "
        "read as runs of consecutive photos drawn at random.",
    )
    ks: list[int] = Field(
        default=[100, 500], description="video_clusters: numbers of clusters; the published top-10 solution used 100 and 500."
    )
    sample_fraction: float = Field(
        default=0.1,
        description="video_clusters: share of photos each KMeans is fitted on (at least 50 per cluster); all are assigned.",
    )
    max_sample_per_cluster: int = Field(
        default=256, description="video_clusters: at most this many fit photos per cluster (more only costs time)."
    )
    seed: int = Field(default=0, description="Seed of the fitting samples and of k-means++.")
    projection: str = Field(
        default="local",
        description="pca_visual_features, video_clusters: where every vector is projected and assigned: local (in the "
        "one pass) or dask (a map over partitions of the released members on the Dask cluster at dask_scheduler, "
        "which must see the data dir; the PCA and KMeans are fitted here first, as locally).",
    )
    dask_scheduler: str = Field(default="", description="For projection dask: the scheduler, tcp://host:port.")
    partition_vectors: int = Field(default=100_000, description="For projection dask: released members per task.")

    def settings(self) -> VisualSettings:
        return VisualSettings(
            encoding=self.encoding,
            dimensions=self.dimensions,
            fit_sample=self.fit_sample,
            ks=tuple(self.ks),
            sample_fraction=self.sample_fraction,
            max_sample_per_cluster=self.max_sample_per_cluster,
            seed=self.seed,
            projection=self.projection,
            dask_scheduler=self.dask_scheduler,
            partition_vectors=self.partition_vectors,
        )


# one version for the three outputs of the one pass: the sources of the whole visual stage
VISUAL_VERSION = modules_version(
    sys.modules[__name__],
    *(codec, store, sampling, sources, projection, flow, stage, distributed, visual_settings),  # kuai_assets.visual
    *(formats_visual, visual_zip, layout, pca, kmeans),
)
EMBEDDINGS = dg.AssetKey("video_embeddings")
PCA = dg.AssetKey("pca_visual_features")
CLUSTERS = dg.AssetKey("video_clusters")


def _spec(key: dg.AssetKey, deps: list[dg.AssetKey], description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        group_name=GROUP,
        kinds={"python", "numpy"},
        deps=deps,
        code_version=VISUAL_VERSION,
        skippable=True,
        description=description,
    )


def _visual_specs() -> list[dg.AssetSpec]:
    """The three outputs of the one pass (a function, so the autoloader sees only the multi-asset)."""
    return [
        _spec(
            EMBEDDINGS,
            [dg.AssetKey("dataset"), dg.AssetKey("raw_interactions")],
            "Every train and test photo's visual vector, consolidated into one memory-mapped matrix. "
            "Reads final_visual_{train,test}.zip (or the unzipped folders, or the preliminary names) in large "
            "sequential blocks and writes stores/video_embeddings/{vectors.npy (bfloat16 by default), photo_id.npy, "
            "split.npy}. Stops with the photo_id for a vector that is missing, of the wrong shape, not a .npy array, "
            "or holds NaN/infinity.",
        ),
        _spec(
            PCA,
            [EMBEDDINGS],
            "The photo vectors reduced by PCA (64 dimensions by default), one row per photo. Unsupervised: "
            "fitted on train and test photos alike, on a sample of runs of consecutive photos; every vector is "
            "projected in the same pass that consolidates it.",
        ),
        _spec(
            CLUSTERS,
            [PCA],
            "KMeans clusters of the reduced photo vectors at every k: one row per (photo_id, k). Fitted on "
            "a sample of the reduced vectors (on a second thread, during the pass); every photo is assigned.",
        ),
    ]


@dg.multi_asset(name="visual_stage", specs=_visual_specs(), can_subset=True)
def visual_stage(context: dg.AssetExecutionContext, config: VisualConfig, workspace: WorkspaceResource):
    """video_embeddings, pca_visual_features and video_clusters in one pass over the vectors."""
    selected = context.selected_asset_keys
    work = workspace.work()
    started = time.time()
    names = [key.to_user_string() for key in (EMBEDDINGS, PCA, CLUSTERS) if key in selected]
    with clear_failures(", ".join(names), workspace.work_dir), ExitStack() as outputs:
        stage = VisualStage(config.settings(), context.log.info)
        store_out = pca_out = clusters_out = None
        if EMBEDDINGS in selected:
            root = workspace.data_root()
            sources = {split: layout.find_visual_source_checked(root, split) for split in layout.SPLITS}
            source = Released(sources)
            store_out = outputs.enter_context(work.writing_store("video_embeddings"))
        else:
            source = VectorStore.open(work.require_store("video_embeddings")) if PCA in selected else None
        if PCA in selected:
            pca_out = outputs.enter_context(work.writing_table("pca_visual_features"))
        if CLUSTERS in selected:
            clusters_out = outputs.enter_context(work.writing_table("video_clusters"))
        if PCA in selected and stage.settings.projection == "dask":
            # the store (a one-machine artefact) by a pass of its own; the tables by the map
            made = stage.run(source, store_out) if store_out is not None else {}
            if not isinstance(source, Released):
                root = workspace.data_root()
                source = Released({split: layout.find_visual_source_checked(root, split) for split in layout.SPLITS})
            made.update(stage.run_on_dask(source, pca_out, clusters_out))
        elif PCA in selected or EMBEDDINGS in selected:
            made = stage.run(source, store_out, pca_out, clusters_out if PCA in selected else None)
        else:
            made = {}
        if store_out is not None:
            extra = _check_coverage(work, store_out, sources)
        if CLUSTERS in selected and PCA not in selected:
            made.update(stage.clusters_from_table(work.require_table("pca_visual_features"), clusters_out))
        context.log.info(f"visual_stage: outputs written after {time.time() - started:.1f} s; publishing them")
        # every output is published together when this block ends without an error
    seconds = round(time.time() - started, 1)
    context.log.info(f"visual_stage: published after {seconds} s")
    if EMBEDDINGS in selected:
        yield _embeddings_result(made["store"], extra, work, seconds)
    if PCA in selected:
        yield _pca_result(made["pca"], work, seconds)
    if CLUSTERS in selected:
        yield _clusters_result(made["clusters"], work, seconds)


def _check_coverage(work, store: Path, sources: dict) -> int:
    """Every photo of the interactions has a vector; returns how many vectors have no interaction."""
    con = work.connect(["raw_interactions"])
    needed = con.execute("select distinct photo_id, split from raw_interactions").fetchnumpy()
    con.close()
    photo_ids = np.load(store / "photo_id.npy")
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
    return int((~np.isin(photo_ids, needed["photo_id"])).sum())


def _embeddings_result(meta: dict, extra: int, work, seconds: float) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        asset_key=EMBEDDINGS,
        metadata={
            "vectors": dg.MetadataValue.int(meta["vectors"]),
            "dimensions": dg.MetadataValue.int(meta["dim"]),
            "encoding": meta["encoding"],
            "store_gb": dg.MetadataValue.float(round(meta["bytes"] / 1e9, 3)),
            "seconds": dg.MetadataValue.float(meta["seconds"]),
            "visual_stage_seconds": dg.MetadataValue.float(seconds),
            "source_mb_per_second": dg.MetadataValue.float(meta["source_megabytes_per_second"] or 0.0),
            "vectors_for_photos_not_in_interactions (kept)": dg.MetadataValue.int(extra),
            "sources": dg.MetadataValue.json(meta["sources"]),
            "path": dg.MetadataValue.path(str(work.store_path("video_embeddings"))),
        },
    )


def _pca_result(model, work, seconds: float) -> dg.MaterializeResult:
    from kuai_assets.ml import plots

    ratio = model.explained_variance_ratio
    cumulative = np.cumsum(ratio)
    return dg.MaterializeResult(
        asset_key=PCA,
        metadata={
            **table_metadata(work.table_path("pca_visual_features")),
            "explained_variance_total": dg.MetadataValue.float(round(float(cumulative[-1]), 4)),
            "explained_variance_first_10": dg.MetadataValue.json([round(float(v), 4) for v in ratio[:10]]),
            "explained_variance_chart": image(
                plots.line_png(list(cumulative), "PCA: cumulative explained variance", "components", "share of variance"),
                "cumulative explained variance",
            ),
            "fitted_on_vectors": dg.MetadataValue.int(model.fitted_on),
            "visual_stage_seconds": dg.MetadataValue.float(seconds),
        },
    )


def _clusters_result(models: dict, work, seconds: float) -> dg.MaterializeResult:
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
    metadata["visual_stage_seconds"] = dg.MetadataValue.float(seconds)
    return dg.MaterializeResult(asset_key=CLUSTERS, metadata=metadata)
