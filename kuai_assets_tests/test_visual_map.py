"""The visual stage's projection and cluster assignment as a map on Dask (visual/distributed.py)
give the tables of the local one-pass stage: same photos in the same order, the reduced vectors
within 1e-6, the same clusters."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from kuai_assets.visual.settings import VisualSettings, VisualSettingsError
from kuai_assets.visual.stage import VisualStage
from kuai_assets_tests.conftest import make_resources
from kuai_assets_tests.handmade import write_dataset

VISUAL = {"dimensions": 8, "fit_sample": 300, "ks": [4, 9], "seed": 3}


@pytest.mark.pipeline  # materializes the visual assets itself, twice
def test_the_map_on_dask_writes_the_tables_of_the_local_pass(tmp_path):
    from distributed import LocalCluster

    from kuai_assets.defs import raw, visual

    data = write_dataset(tmp_path / "data", n_train_photos=700, n_test_photos=260, dim=24)
    assets = dg.load_assets_from_modules([raw, visual])
    local = tmp_path / "local"
    dg.materialize(assets, resources=make_resources(data, local), run_config={"ops": {"visual_stage": {"config": VISUAL}}})
    mapped = tmp_path / "mapped"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = {**VISUAL, "projection": "dask", "dask_scheduler": cluster.scheduler_address, "partition_vectors": 150}
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize(
                assets, instance=instance, resources=make_resources(data, mapped),
                run_config={"ops": {"visual_stage": {"config": config}}},
            )
            messages = [e.user_message for e in instance.all_logs(result.run_id)]
    # 700 and 260 members in partitions of 150: 5 + 2 tasks on the two workers
    assert any("visual map: 960 vectors in 7 partition(s)" in m and "on 2 Dask worker(s)" in m for m in messages), messages

    a = pq.read_table(local / "tables" / "pca_visual_features.parquet")
    b = pq.read_table(mapped / "tables" / "pca_visual_features.parquet")
    assert a.schema == b.schema and a.num_rows == b.num_rows == 960
    assert a.column("photo_id").equals(b.column("photo_id")) and a.column("split").equals(b.column("split"))
    for name in [n for n in a.column_names if n.startswith("pc_")]:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        assert np.abs(x.astype(np.float64) - y).max() <= 1e-6, name
    clusters_a = pq.read_table(local / "tables" / "video_clusters.parquet")
    clusters_b = pq.read_table(mapped / "tables" / "video_clusters.parquet")
    assert clusters_a.num_rows == 2 * 960 and clusters_a.equals(clusters_b)


def test_a_bad_projection_setting_is_named():
    with pytest.raises(VisualSettingsError, match="projection must be one of local, dask, not 'spark'"):
        VisualStage(VisualSettings(projection="spark"))
    with pytest.raises(VisualSettingsError, match=r"projection dask needs dask_scheduler \(tcp://host:port\)"):
        VisualStage(VisualSettings(projection="dask"))
    with pytest.raises(VisualSettingsError, match="partition_vectors must be at least 1, got 0"):
        VisualStage(VisualSettings(projection="dask", dask_scheduler="tcp://127.0.0.1:8786", partition_vectors=0))
