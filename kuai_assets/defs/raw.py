"""Raw: the dataset folder, and the released text files typed and validated, one Parquet table each."""


from pathlib import Path

import dagster as dg

from kuai_assets.defs.factory import table_asset, versioned_asset
from kuai_assets.defs.resources import WorkspaceResource
from kuai_assets.formats.layout import fingerprint
from kuai_assets.formats.released import read_faces, read_interactions, read_text
from kuai_assets.synth import generate_if_absent

GROUP = "raw"


def _report_metadata(report) -> dict:
    out = {f"rows_{split}": dg.MetadataValue.int(n) for split, n in report.rows.items()}
    out["accepted_and_counted"] = dg.MetadataValue.json(report.accepted)
    return out


@versioned_asset(group_name=GROUP, kinds={"files"})
def dataset(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dg.MaterializeResult:
    """The folder of released files (train/ and test/) that the raw tables and the visual stage read.

    Checked for the released layout and fingerprinted: the data version is a hash of every file's
    name, size and modification time, so a replaced file marks everything downstream stale. Only
    the workspace's own synthetic default (<work_dir>/data/<size>) is ever generated, there, when
    absent, and the log says so; any other missing or malformed folder fails, naming it.
    """
    root = Path(workspace.data_dir)
    if workspace.generates_here():
        generate_if_absent(root, root.name, context.log.warning)
    root = workspace.data_root()
    files = fingerprint(root)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(files.digest),
        metadata={
            "data_dir": dg.MetadataValue.path(str(root)),
            "files": dg.MetadataValue.int(len(files.sizes)),
            "bytes": dg.MetadataValue.int(sum(files.sizes.values())),
            "fingerprint": files.digest,
        },
    )


@table_asset(group_name=GROUP, reads=("dataset",))
def raw_interactions(context: dg.AssetExecutionContext, con, out, workspace: WorkspaceResource) -> dict:
    """Train and test impressions from train_interaction.txt and test_interaction.txt.

    One row per impression: row_id, split, line (in its file), user_id, photo_id, click, like,
    follow, time (ms), playing_time, duration_time; labels are null on test rows. Malformed lines,
    repeated (user_id, photo_id) pairs and test photos that also appear in train stop the run
    with the file and line; playing_time outliers are kept and counted.
    """
    root = workspace.data_root()
    report = read_interactions(con, root, out)
    return {**_report_metadata(report), "data_dir": dg.MetadataValue.path(str(root))}


@table_asset(group_name=GROUP, reads=("dataset",), upstream=("raw_interactions",))
def raw_faces(context: dg.AssetExecutionContext, con, out, workspace: WorkspaceResource) -> dict:
    """Detected faces from train_face.txt and test_face.txt, one row per face.

    share of the cover, gender (0 female, 1 male), age and appearance (0-99). Only works with a
    face have rows. Malformed JSON and out-of-range values stop the run with the file, line and
    photo_id; rows for photos not in the interactions are dropped and counted.
    """
    con.execute("create temp table photos as select distinct photo_id, split from raw_interactions")
    return _report_metadata(read_faces(con, workspace.data_root(), "photos", out))


@table_asset(group_name=GROUP, reads=("dataset",), upstream=("raw_interactions",))
def raw_text(context: dg.AssetExecutionContext, con, out, workspace: WorkspaceResource) -> dict:
    """Cover words from train_text.txt and test_text.txt, one row per work in the interactions.

    words is the list of word ids: empty when the cover has no text (the released single token
    `0`); `0` inside a longer list stays an ordinary word id. A non-integer token stops the run
    with the file and line; an empty value or a missing row reads as no text and is counted.
    """
    con.execute("create temp table photos as select distinct photo_id, split from raw_interactions")
    return _report_metadata(read_text(con, workspace.data_root(), "photos", out))
