"""The definitions load, and the graph's shape is reviewed like code: a snapshot of every asset's
key, group, kinds and upstream keys."""

import dagster as dg

from kuai_assets.definitions import defs

EXPECTED_GRAPH = {
    "raw_interactions": ("raw", []),
    "raw_faces": ("raw", ["raw_interactions"]),
    "raw_text": ("raw", ["raw_interactions"]),
    "video_embeddings": ("visual", ["raw_interactions"]),
    "pca_visual_features": ("visual", ["video_embeddings"]),
    "video_clusters": ("visual", ["pca_visual_features"]),
    "model_rows": ("features", ["raw_interactions"]),
    "label_history": ("features", ["model_rows", "raw_interactions"]),
    "user_behaviour": ("features", ["label_history", "model_rows"]),
    "user_cluster_affinity": ("features", ["label_history", "model_rows", "video_clusters"]),
    "cluster_stats": ("features", ["label_history", "model_rows", "video_clusters"]),
    "visual_similarity": ("features", ["label_history", "model_rows", "pca_visual_features"]),
    "photo_visual": ("features", ["pca_visual_features"]),
    "face_stats": ("features", ["raw_faces", "raw_interactions"]),
    "user_face_preference": ("features", ["label_history", "model_rows", "raw_faces"]),
    "text_stats": ("features", ["raw_text"]),
    "word_click_rates": ("features", ["label_history", "model_rows", "raw_text"]),
    "user_word_affinity": ("features", ["label_history", "model_rows", "raw_text"]),
    "impression_context": ("features", ["raw_interactions"]),
    "time_and_duration": ("features", ["raw_interactions"]),
    "published_baseline": ("features", ["label_history", "model_rows", "raw_interactions", "video_clusters"]),
    "training_matrix": (
        "model",
        sorted(
            ["model_rows", "raw_interactions", "video_clusters", "user_behaviour", "user_cluster_affinity",
             "cluster_stats", "visual_similarity", "photo_visual", "face_stats", "user_face_preference",
             "text_stats", "word_click_rates", "user_word_affinity", "impression_context", "time_and_duration",
             "published_baseline"]
        ),
    ),
    "model": ("model", ["training_matrix"]),
    "baseline_model": ("model", ["training_matrix"]),
    "feature_group_ablation": ("model", ["training_matrix"]),
    "attention_model": (
        "model",
        sorted(["training_matrix", "model_rows", "label_history", "pca_visual_features", "video_clusters", "raw_text",
                "raw_faces", "raw_interactions"]),
    ),
    "blend": ("model", ["attention_model", "model", "training_matrix"]),
    "submission": ("model", ["blend", "model"]),
    "evaluation": ("model", ["baseline_model", "submission"]),
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
    assert set(defs.resources) == {"workspace", "tracking"}
    assert isinstance(defs.resolve_job_def("everything"), dg.JobDefinition)
