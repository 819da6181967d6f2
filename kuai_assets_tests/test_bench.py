"""`python -m kuai_assets.bench`: the benchmarks of the checkout, by name."""

from __future__ import annotations

import subprocess
import sys

from kuai_assets import bench


def test_lists_every_benchmark_script_with_its_first_line(capsys):
    assert bench.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("quality", "loop", "spark_vs_duckdb", "ceiling", "scale"):
        assert f"  {name}" in out
    assert "How close the platform comes to the oracle" in out


def test_an_unknown_name_is_one_line_naming_the_benchmarks():
    done = subprocess.run([sys.executable, "-m", "kuai_assets.bench", "qualty"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "kuai_assets.bench: no benchmark 'qualty'; there are: " + ", ".join(bench.available())
    ]


def test_runs_the_named_benchmark_with_its_options():
    done = subprocess.run(
        [sys.executable, "-m", "kuai_assets.bench", "quality", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "--drop-group" in done.stdout and "--worlds" in done.stdout


def test_quality_refuses_an_unknown_group_before_any_work(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "kuai_assets.bench", "quality", "--size", "tiny", "--out", str(tmp_path / "q"),
         "--drop-group", "no_such_group"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "error: --drop-group: 'no_such_group' is not one of the model's feature groups: " in done.stderr
    assert not (tmp_path / "q").exists()
