"""Asset checks: the guarantees downstream assets rely on, shown in the UI, blocking where a
failure would make what comes after wrong."""


import dagster as dg
import numpy as np

from kuai_assets.defs.resources import KuaiResource


@dg.asset_check(asset="raw_interactions", blocking=True, description="Train and test photo ids are disjoint.")
def train_and_test_photos_disjoint(kuai: KuaiResource) -> dg.AssetCheckResult:
    con = kuai.work().connect(["raw_interactions"])
    shared = con.execute(
        "select count(*) from (select photo_id from raw_interactions where split = 'train' "
        "intersect select photo_id from raw_interactions where split = 'test')"
    ).fetchone()[0]
    con.close()
    return dg.AssetCheckResult(passed=shared == 0, metadata={"shared_photo_ids": int(shared)})


@dg.asset_check(
    asset="raw_interactions",
    blocking=True,
    description="Train click rate and row counts are plausible (click rate 1%-60%, both splits non-empty).",
)
def click_rate_plausible(kuai: KuaiResource) -> dg.AssetCheckResult:
    con = kuai.work().connect(["raw_interactions"])
    train_rows, test_rows, click_rate = con.execute(
        "select count(*) filter (where split = 'train'), count(*) filter (where split = 'test'), "
        "avg(click) filter (where split = 'train') from raw_interactions"
    ).fetchone()
    con.close()
    passed = train_rows > 0 and test_rows > 0 and click_rate is not None and 0.01 <= click_rate <= 0.6
    return dg.AssetCheckResult(
        passed=bool(passed),
        metadata={"train_rows": train_rows, "test_rows": test_rows, "click_rate": float(click_rate or 0.0)},
    )


def all_checks() -> list:
    return [train_and_test_photos_disjoint, click_rate_plausible]
