"""A model keeps its result in a `kuai run` (run tag kuai/reuse: unchanged) when nothing it learns
from has changed, and trains otherwise: without the tag, after a change of its settings or of
its columns, and (the network) when its refit would now be decided otherwise. The ablation does
the same variant by variant."""

import json
import shutil

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kuai_assets.defs.reuse import KEY, REUSE_TAG, TRAINED_IN, UNCHANGED, matrix_inputs
from kuai_assets.features.matrix import MATRIX, PIECES_KEY
from kuai_assets_tests.conftest import TINY_RUN_CONFIG, make_resources

REUSE = {REUSE_TAG: UNCHANGED}


@pytest.fixture()
def workspace(materialized, tmp_path):
    """A copy of the materialized workspace with its Dagster instance (the materializations that
    recorded the inputs keys) and its MLflow store."""
    work = tmp_path / "work"
    shutil.copytree(materialized["work"], work, symlinks=True)
    with dg.DagsterInstance.from_config(str(work / "dagster_home")) as instance:
        yield {"work": work, "instance": instance, "resources": make_resources(materialized["data"], work)}


def materialize(ws, selection: list[str], tags: dict | None = None, ops: dict | None = None) -> dict:
    """Materialize `selection` with the tiny run's settings (`ops` replacing some); each asset's
    metadata as plain values."""
    from kuai_assets.definitions import defs

    config = {name: TINY_RUN_CONFIG["ops"][name] for name in selection if name in TINY_RUN_CONFIG["ops"]}
    result = dg.materialize([*defs.assets], selection=selection, instance=ws["instance"], resources=ws["resources"],
                            run_config={"ops": {**config, **(ops or {})}}, tags=tags or {})
    assert result.success
    return {name: {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}
            for name in selection}


def latest(ws, name: str) -> dict:
    event = ws["instance"].get_latest_materialization_event(dg.AssetKey(name))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def mlflow_runs(ws) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{ws['work']}/mlflow/mlflow.db")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000))


def test_the_gbdts_keep_their_models_in_a_kuai_run_and_train_otherwise(workspace):
    ws = workspace
    before = {name: latest(ws, name) for name in ("model", "baseline_model")}
    assert all(meta[KEY] for meta in before.values())
    runs = mlflow_runs(ws)

    # the MLflow UI moved since (`kuai mlflow-ui --port 5517`): the kept runs' links follow it
    from kuai_assets.defs.resources import TrackingResource

    tracking = ws["resources"]["tracking"]
    ws["resources"]["tracking"] = TrackingResource(tracking_uri=tracking.tracking_uri,
                                                   artifact_root=tracking.artifact_root, ui_url="http://127.0.0.1:5517")
    kept = materialize(ws, ["model", "baseline_model"], tags=REUSE)
    for name, meta in kept.items():
        assert meta["mlflow_run_id"] == before[name]["mlflow_run_id"], name
        assert meta["valid_auc"] == before[name]["valid_auc"] and meta[KEY] == before[name][KEY]
        assert "is kept" in meta["kept"] and meta[TRAINED_IN]
        base, _, path = before[name]["mlflow_run"].partition("/#/")
        assert base != "http://127.0.0.1:5517" and path.startswith("experiments/")
        assert meta["mlflow_run"] == f"http://127.0.0.1:5517/#/{path}"
    assert mlflow_runs(ws) == runs  # nothing trained, nothing recorded

    # without the tag (the UI's Materialize, the dagster CLI): trained, though nothing changed
    trained = materialize(ws, ["baseline_model"])["baseline_model"]
    assert trained["mlflow_run_id"] != before["baseline_model"]["mlflow_run_id"] and "kept" not in trained
    assert trained[KEY] == before["baseline_model"][KEY]
    assert json.loads((ws["work"] / "stores" / "baseline_model" / "run.json").read_text())["mlflow_run_id"] == \
        trained["mlflow_run_id"]
    # other settings: trained, under another key
    other = materialize(ws, ["baseline_model"], tags=REUSE,
                        ops={"baseline_model": {"config": {"max_rounds": 40, "early_stopping_rounds": 10}}})
    assert other["baseline_model"]["mlflow_run_id"] != trained["mlflow_run_id"]
    assert other["baseline_model"][KEY] != trained[KEY] and "kept" not in other["baseline_model"]
    # a store that is not the recorded run's (replaced since): trained
    store = (ws["work"] / "stores" / "model").resolve() / "run.json"
    store.write_text(json.dumps({**json.loads(store.read_text()), "mlflow_run_id": "another"}))
    assert "kept" not in materialize(ws, ["model"], tags=REUSE)["model"]


def test_the_network_keeps_its_result_unless_its_refit_would_now_be_decided_otherwise(workspace):
    ws = workspace
    before = latest(ws, "attention_model")
    kept = materialize(ws, ["attention_model"], tags=REUSE)["attention_model"]
    assert kept["mlflow_run_id"] == before["mlflow_run_id"] and "is kept" in kept["kept"]
    assert kept["refit_decision_now"].split(":")[0] == before["refit_decision"].split(":")[0]

    # the GBDT's validation predictions replaced by noise, as a far worse GBDT would give: the blend
    # now gives the network weight, so its refit is decided otherwise, and it is trained again
    assert before["refitted"] is False
    store = (ws["work"] / "stores" / "model").resolve() / "validation_predictions.parquet"
    table = pq.read_table(store)
    noise = np.random.default_rng(0).random(table.num_rows)
    pq.write_table(table.set_column(table.column_names.index("p_click"), "p_click", pa.array(noise)), store)
    trained = materialize(ws, ["attention_model"], tags=REUSE)["attention_model"]
    assert trained["mlflow_run_id"] != before["mlflow_run_id"] and "kept" not in trained
    assert trained["refitted"] is True


def test_matrix_inputs_are_a_groups_piece_key_and_the_rows_not_the_other_groups_keys(materialized, tmp_path):
    matrix = materialized["work"] / "tables" / f"{MATRIX}.parquet"
    table = pq.read_table(matrix)
    keys = json.loads(table.schema.metadata[PIECES_KEY])
    group, other = sorted(keys)[:2]
    first = matrix_inputs(matrix, [group])
    assert first["groups"] == {group: keys[group]}

    def written(name: str, new_keys: dict | None, clicks=None) -> dict | None:
        metadata = dict(table.schema.metadata)
        if new_keys is None:
            del metadata[PIECES_KEY]
        else:
            metadata[PIECES_KEY] = json.dumps(new_keys).encode()
        changed = table if clicks is None else table.set_column(table.column_names.index("click"), "click", clicks)
        pq.write_table(changed.replace_schema_metadata(metadata), tmp_path / name)
        return matrix_inputs(tmp_path / name, [group])

    assert written("other_key.parquet", {**keys, other: "edited"}) == first  # another group's edit
    assert written("own_key.parquet", {**keys, group: "edited"})["groups"] != first["groups"]
    click = table.column("click")  # null on the test rows
    flipped = pc.subtract(pa.scalar(1, click.type), click).cast(click.type)
    assert written("clicks.parquet", keys, flipped)["rows"] != first["rows"]
    assert written("no_keys.parquet", None) is None  # a matrix from before piece keys: never kept


def test_the_ablation_keeps_the_variants_without_an_edited_group_and_they_are_what_training_gives(workspace):
    """After the edit of one group (its columns and its piece key in the matrix), a `kuai run`
    keeps every variant without that group and trains the others; the kept figures are those that
    training the variant again gives, to the last digit."""
    from kuai_assets.defs.reuse import VARIANT_KEYS

    ws = workspace
    name = "feature_group_ablation"
    before = latest(ws, name)
    assert before[VARIANT_KEYS]  # recorded without the tag too

    matrix = ws["work"] / "tables" / f"{MATRIX}.parquet"
    table = pq.read_table(matrix)
    keys = json.loads(table.schema.metadata[PIECES_KEY])
    from kuai_assets.features.matrix import read_features

    edited = "time_and_duration"
    columns = [f.name for f in read_features(matrix) if f.group == edited and f.kind == "continuous"]
    assert columns and edited != "user_behaviour"
    for column in columns:  # the edit: new values of the group's columns, and its new piece key
        values = table.column(column)
        table = table.set_column(table.column_names.index(column), column,
                                 pc.multiply(pc.add(values, pa.scalar(1.0, values.type)), pa.scalar(1.7, values.type)))
    metadata = {**table.schema.metadata, PIECES_KEY: json.dumps({**keys, edited: "edited"}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), matrix)

    kept = materialize(ws, [name], tags=REUSE)[name]
    entry = kept[VARIANT_KEYS]
    without_edited = {v for v, e in before[VARIANT_KEYS].items()
                      if v == f"without {edited}" or (v.startswith("user_behaviour") and edited not in v)}
    assert {v for v, e in entry.items() if e["mlflow_run_id"] == before[VARIANT_KEYS][v]["mlflow_run_id"]} == without_edited
    assert kept["variants_kept"] == len(without_edited) >= 2
    for variant in without_edited:
        assert entry[variant]["valid_auc"] == before[VARIANT_KEYS][variant]["valid_auc"]
    assert entry[f"user_behaviour + {edited}"]["key"] != before[VARIANT_KEYS][f"user_behaviour + {edited}"]["key"]

    # without the tag, every variant is trained: the kept ones come out as they were kept
    trained = materialize(ws, [name])[name]
    assert trained["variants_kept"] == 0
    for variant, figures in trained[VARIANT_KEYS].items():
        assert figures["key"] == entry[variant]["key"]
        assert (figures["valid_auc"], figures["best_iteration"]) == (entry[variant]["valid_auc"], entry[variant]["best_iteration"])
        assert figures["mlflow_run_id"] != entry[variant]["mlflow_run_id"]

    # other settings: nothing kept
    other = materialize(ws, [name], tags=REUSE, ops={name: {"config": {"max_fit_rows": 20_000, "max_rounds": 50,
                                                                       "early_stopping_rounds": 10}}})[name]
    assert other["variants_kept"] == 0


def test_a_retrained_gbdt_says_how_its_validation_auc_moved_before_its_refit(workspace):
    """The figure a person editing a feature waits for comes before the refit, against the
    previous materialization: here nothing changed, so +0.0000 against the same AUC."""
    import time

    from kuai_assets.definitions import defs

    ws = workspace
    event = ws["instance"].get_latest_materialization_event(dg.AssetKey("baseline_model"))
    previous = event.asset_materialization.metadata["valid_auc"].value
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.timestamp))
    result = dg.materialize([*defs.assets], selection=["baseline_model"], instance=ws["instance"],
                            resources=ws["resources"],
                            run_config={"ops": {"baseline_model": TINY_RUN_CONFIG["ops"]["baseline_model"]}})
    messages = [e.user_message for e in ws["instance"].all_logs(result.run_id) if e.step_key == "baseline_model"]
    expected = (f"baseline_model: +0.0000 validation AUC against the previous baseline_model "
                f"({previous:.4f}, Dagster run {event.run_id[:8]}, {when})")
    assert expected in messages, [m for m in messages if "against" in m]
    refit = next(i for i, m in enumerate(messages) if "refitted" in m)
    assert messages.index(expected) < refit  # said before the refit begins
