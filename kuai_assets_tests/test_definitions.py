"""The definitions load, and the graph's shape is reviewed like code: a snapshot of every asset's
key, group, kinds and upstream keys."""

import dagster as dg
import pytest

from kuai_assets.definitions import defs

EXPECTED_GRAPH = {
    "dataset": ("raw", []),
    "raw_interactions": ("raw", ["dataset"]),
    "raw_faces": ("raw", ["dataset", "raw_interactions"]),
    "raw_text": ("raw", ["dataset", "raw_interactions"]),
    "video_embeddings": ("visual", ["dataset", "raw_interactions"]),
    "pca_visual_features": ("visual", ["video_embeddings"]),
    "video_clusters": ("visual", ["pca_visual_features"]),
    "model_rows": ("features", ["raw_interactions"]),
    "label_history": ("features", ["model_rows", "raw_interactions"]),
    "user_behaviour": ("features", ["label_history", "model_rows"]),
    "user_cluster_affinity": ("features", ["label_history", "model_rows", "video_clusters"]),
    "cluster_stats": ("features", ["label_history", "model_rows", "video_clusters"]),
    "visual_similarity": ("features", ["label_history", "model_rows", "pca_visual_features"]),
    "visual_taste": ("features", ["label_history", "model_rows", "pca_visual_features", "video_clusters"]),
    "user_visual_group_affinity": ("features", ["label_history", "model_rows", "pca_visual_features", "video_clusters"]),
    "photo_visual": ("features", ["pca_visual_features"]),
    "face_stats": ("features", ["raw_faces", "raw_interactions"]),
    "user_face_preference": ("features", ["label_history", "model_rows", "raw_faces"]),
    "user_face_match": ("features", ["label_history", "model_rows", "raw_faces"]),
    "user_attribute_taste": ("features", ["label_history", "model_rows", "raw_text"]),
    "user_taste_within_clusters": (
        "features", ["label_history", "model_rows", "raw_faces", "raw_interactions", "raw_text", "video_clusters"]),
    "text_stats": ("features", ["raw_text"]),
    "word_click_rates": ("features", ["label_history", "model_rows", "raw_text"]),
    "user_word_affinity": ("features", ["label_history", "model_rows", "raw_text"]),
    "impression_context": ("features", ["raw_interactions"]),
    "user_cluster_exposure": ("features", ["raw_interactions", "video_clusters"]),
    "session_context": ("features", ["pca_visual_features", "raw_interactions"]),
    "impression_embedding": ("features", ["label_history", "model_rows", "raw_interactions"]),
    "time_and_duration": ("features", ["raw_interactions"]),
    "published_baseline": ("features", ["label_history", "model_rows", "raw_interactions", "video_clusters"]),
    "training_matrix": (
        "model",
        sorted(
            ["model_rows", "raw_interactions", "video_clusters", "user_behaviour", "user_cluster_affinity",
             "cluster_stats", "visual_similarity", "photo_visual", "face_stats", "user_face_preference",
             "text_stats", "word_click_rates", "user_word_affinity", "impression_context", "time_and_duration",
             "published_baseline", "impression_embedding", "visual_taste", "user_cluster_exposure",
             "user_visual_group_affinity", "user_attribute_taste", "session_context", "user_face_match",
             "user_taste_within_clusters"]
        ),
    ),
    "model": ("model", ["training_matrix"]),
    "baseline_model": ("model", ["training_matrix"]),
    "feature_group_ablation": ("model", ["training_matrix"]),
    "attention_model": (
        "model",
        sorted(["training_matrix", "model", "model_rows", "label_history", "pca_visual_features", "video_clusters", "raw_text",
                "raw_faces", "raw_interactions"]),
    ),
    "blend": ("model", ["attention_model", "model", "training_matrix"]),
    "submission": ("model", ["blend", "model", "training_matrix"]),
    "evaluation": ("model", ["attention_model", "baseline_model", "blend", "model", "submission"]),
}


def test_graph_snapshot():
    graph = defs.resolve_asset_graph()
    actual = {
        key.to_user_string(): (
            graph.get(key).group_name,
            sorted(p.to_user_string() for p in graph.get(key).parent_keys),
        )
        for key in graph.get_all_asset_keys()
    }
    assert actual == EXPECTED_GRAPH


def test_every_asset_has_description_kinds_and_code_version():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key
        assert node.kinds, key
        assert node.code_version, key


def test_jobs_and_resources():
    assert {j.name for j in defs.jobs} == {"everything", "retrain", "rescore"}
    retrain = defs.resolve_job_def("retrain")
    assert {k.to_user_string() for k in retrain.asset_layer.selected_asset_keys} == {
        "training_matrix", "model", "baseline_model", "feature_group_ablation", "attention_model", "blend",
        "submission", "evaluation",
    }
    assert set(defs.resources) == {"workspace", "tracking", "engine"}
    assert isinstance(defs.resolve_job_def("everything"), dg.JobDefinition)


PLANTED_ASSET = '''
import dagster as dg

from kuai_assets.defs.factory import table_asset
from kuai_assets.defs.resources import WorkspaceResource


def threshold() -> int:
    return {threshold}


@table_asset(group_name="test")
def planted_table(context: dg.AssetExecutionContext, con, out, workspace: WorkspaceResource):
    """A table asset written for the test."""
    con.execute(f"copy (select range as x from range({{threshold()}})) to '{{out}}' (format parquet)")
'''


def test_editing_an_asset_source_marks_it_unsynced(tmp_path, monkeypatch):
    """Code versions are derived: editing the source an asset calls gives a new version, and
    Dagster's own staleness resolver then reports the materialized asset as stale (unsynced)."""
    import importlib
    import sys

    import dagster as dg
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from kuai_assets.defs.resources import WorkspaceResource

    module_file = tmp_path / "planted_assets.py"
    module_file.write_text(PLANTED_ASSET.format(threshold=3))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("planted_assets")
    # no dataset: the work dir's synthetic default, which the resource accepts (the asset never reads it)
    work = tmp_path / "work"
    resources = {"workspace": WorkspaceResource(data_dir=str(work / "data" / "tiny"), work_dir=str(work))}
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize([module.planted_table], instance=instance, resources=resources).success
        key = dg.AssetKey("planted_table")
        before = module.planted_table.code_versions_by_key[key]
        assert get_stale_status_resolver(instance, [module.planted_table]).get_status(key) == StaleStatus.FRESH

        module_file.write_text(PLANTED_ASSET.format(threshold=4))  # only the helper changes
        module = importlib.reload(module)
        assert module.planted_table.code_versions_by_key[key] != before
        resolver = get_stale_status_resolver(instance, [module.planted_table])
        assert resolver.get_status(key) == StaleStatus.STALE
        assert any("code version" in cause.reason for cause in resolver.get_stale_causes(key))
    sys.modules.pop("planted_assets", None)


def test_every_asset_has_a_derived_code_version(monkeypatch):
    import inspect

    import kuai_assets.ml.gbdt as gbdt
    from kuai_assets.defs import model
    from kuai_assets.defs.factory import source_version

    versions = {k.to_user_string(): v for a in defs.assets for k, v in a.code_versions_by_key.items()}
    assert all(v and len(v) == 12 for v in versions.values()), versions  # hashes, none typed by hand
    function = model.model.op.compute_fn.decorated_fn
    assert versions["model"] == source_version(function)
    # the version covers the training logic the asset calls in ml/: editing it changes the version
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: real(obj) + ("\n# edited\n" if obj is gbdt else ""))
    assert source_version(function) != versions["model"]


def test_each_asset_is_found_once_by_the_autoloader():
    """defs/ modules name each other's assets by key, never by importing them: an imported asset
    is a second module attribute the autoloader finds again."""
    from collections import Counter

    counts = Counter(key.to_user_string() for asset in defs.assets for key in asset.keys)
    assert [key for key, n in counts.items() if n > 1] == []


def test_the_definitions_load_without_torch_or_scikit_learn():
    """Every `dagster` and `kuai` command loads the definitions: torch (about 1.2 s and 190 MB) and
    scikit-learn (about 1 s) are imported by the steps that use them, not by the loading."""
    import subprocess
    import sys

    probe = "import sys, kuai_assets.definitions; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_code_versions_are_the_same_in_every_process():
    """A code version is read off sources, never off the order in which a process happens to walk
    a set of names (string hashing differs per process): else `kuai run` and the dagster CLI would
    see each other's materializations as made by other code, and `kuai run --unsynced` would redo
    them."""
    import json
    import os
    import subprocess
    import sys

    probe = ("import json; from kuai_assets.definitions import defs; g = defs.resolve_asset_graph(); "
             "print(json.dumps({k.to_user_string(): g.get(k).code_version for k in g.get_all_asset_keys()}))")
    seen = [json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout)
            for seed in (1, 2, 3, 4)]
    assert all(len(versions) > 30 and versions == seen[0] for versions in seen), [
        sorted(k for k in seen[0] if any(v.get(k) != seen[0][k] for v in seen))]


def test_a_module_named_in_logic_is_versioned_by_its_source_without_importing_it():
    import importlib
    import inspect

    from kuai_assets.defs.factory import module_source, modules_version

    name = "kuai_assets.ml.attention.network"
    assert module_source(name) == inspect.getsource(importlib.import_module(name))
    assert modules_version(name) == modules_version(importlib.import_module(name))
    with pytest.raises(TypeError, match="no module named"):
        module_source("kuai_assets.ml.attention.no_such_module")
