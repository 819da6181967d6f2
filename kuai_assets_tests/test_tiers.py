"""The tier markers: every test has exactly one, and `pytest -m unit` never materializes the graph.

conftest.tier_of is the rule; test_unit_tier_never_uses_the_materialized_graph collects the real
suite with `-m unit` in a subprocess and checks what was selected and deselected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuai_assets_tests.conftest import TIERS, tier_of

TESTS = Path(__file__).resolve().parent

PROBE = '''
import json, os

selected, deselected = [], []

def describe(item):
    return {
        "nodeid": item.nodeid,
        "file": item.path.name,
        "fixtures": sorted(item.fixturenames),
        "tiers": sorted(m.name for m in item.iter_markers() if m.name in ("unit", "pipeline", "system")),
    }

def pytest_deselected(items):
    deselected.extend(describe(item) for item in items)

def pytest_collection_finish(session):
    selected.extend(describe(item) for item in session.items)
    with open(os.environ["TIER_PROBE_OUT"], "w") as out:
        json.dump({"selected": selected, "deselected": deselected}, out)
'''


@pytest.mark.parametrize(
    "file_name, fixtures, explicit, tier",
    [
        ("test_x.py", ["tmp_path"], [], "unit"),
        ("test_x.py", ["tables", "materialized", "tiny_data"], [], "pipeline"),  # through another fixture
        ("test_browser.py", ["page", "materialized"], [], "system"),
        ("test_robustness.py", ["tmp_path"], [], "system"),
        ("test_x.py", ["tmp_path"], ["pipeline"], "pipeline"),  # an explicit tier wins
        ("test_x.py", ["materialized"], ["system"], "system"),
    ],
)
def test_tier_rule(file_name, fixtures, explicit, tier):
    assert tier_of(file_name, fixtures, explicit) == tier


def test_a_test_with_two_tiers_is_refused():
    with pytest.raises(ValueError, match="one tier"):
        tier_of("test_x.py", [], ["unit", "system"])


def test_unit_tier_never_uses_the_materialized_graph(tmp_path):
    (tmp_path / "tier_probe.py").write_text(PROBE)
    out = tmp_path / "collected.json"
    root = TESTS.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root), os.environ.get("PYTHONPATH", "")]),
        "TIER_PROBE_OUT": str(out),
    }
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "unit", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*argv, "-p", "tier_probe", str(TESTS)], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = json.loads(out.read_text())
    selected, deselected = collected["selected"], collected["deselected"]
    assert selected and deselected

    every = selected + deselected
    several = [t["nodeid"] for t in every if len(t["tiers"]) != 1]
    assert not several, f"tests without exactly one tier: {several}"
    assert all(t["tiers"] == ["unit"] for t in selected)
    assert all(t["tiers"] != ["unit"] for t in deselected)
    materializing = [t["nodeid"] for t in selected if "materialized" in t["fixtures"]]
    assert not materializing, f"`-m unit` selects tests that use the materialized graph: {materializing}"
    # the system files are never unit, and each tier has tests
    assert not [t for t in selected if t["file"] in ("test_browser.py", "test_robustness.py")]
    assert {tier for t in every for tier in t["tiers"]} == set(TIERS)
    assert any(t["nodeid"].endswith("test_unit_tier_never_uses_the_materialized_graph") for t in selected)
