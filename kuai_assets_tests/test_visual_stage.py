"""The visual stage in one pass (kuai_assets.visual.stage.VisualStage): the fitting sample of runs, and the fused
pass against the same outputs made one asset at a time from the store."""

import time
import zipfile

import numpy as np
import pandas as pd
import pytest

from kuai_assets.formats import layout
from kuai_assets.visual import codec
from kuai_assets.visual import stage as stage_module
from kuai_assets.visual.sampling import FitSample, read_sample
from kuai_assets.visual.settings import VisualSettings
from kuai_assets.visual.sources import Released
from kuai_assets.visual.stage import VisualStage
from kuai_assets.visual.store import VectorStore
from kuai_assets_tests.handmade import write_dataset

SETTINGS = VisualSettings(dimensions=8, fit_sample=300, ks=(4, 9), seed=3, run_length=7)


def test_fit_sample_is_runs_of_consecutive_rows_in_a_random_order():
    sample = FitSample.draw(total=1_000, largest=200, seed=5, run_length=32)
    positions = sample.positions
    assert np.all(np.diff(positions) > 0) and positions.min() >= 0 and positions.max() < 1_000
    # whole runs: every position's run is [32 r, 32 r + 32) and all of it is there
    runs = np.unique(positions // 32)
    assert len(runs) == 7  # ceil(200 / 32)
    assert np.array_equal(positions, np.concatenate([np.arange(32 * r, min(32 * r + 32, 1_000)) for r in runs]))
    # the first runs of the random order: nested, about n rows each
    small, large = sample.first(64), sample.first(150)
    assert small.sum() == 64 and large.sum() == 160 and np.all(large[small])
    assert len(np.unique(sample.run_rank)) == 7 and sorted(np.unique(sample.run_rank)) == list(range(7))
    # another seed draws other runs; the same seed the same ones
    assert np.array_equal(FitSample.draw(1_000, 200, 5, 32).positions, positions)
    assert not np.array_equal(FitSample.draw(1_000, 200, 6, 32).positions, positions)


def test_fit_sample_ranges_merge_neighbours_and_split_at_a_boundary():
    sample = FitSample(np.array([3, 4, 5, 9, 10, 11, 12, 20]), np.zeros(8, dtype=np.int64), 4)
    assert sample.ranges() == [(3, 6), (9, 13), (20, 21)]
    # the second reader holds rows 10.. : its own ranges, shifted and clipped
    assert sample.ranges(0, 10) == [(3, 6), (9, 10)]
    assert sample.ranges(10, 5) == [(0, 3)]
    assert sample.ranges(15, 100) == [(5, 6)]


def test_a_sample_larger_than_the_rows_takes_every_row():
    sample = FitSample.draw(total=50, largest=1_000, seed=0, run_length=8)
    assert np.array_equal(sample.positions, np.arange(50)) and sample.first(10**6).all()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("visual") / "data", n_train_photos=700, n_test_photos=260, dim=24,
                         compression=zipfile.ZIP_STORED)
    return {split: layout.find_visual_source_checked(root, split) for split in layout.SPLITS}


@pytest.fixture(scope="module")
def fused(released, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    (out / "store").mkdir()
    made = VisualStage(SETTINGS).run(Released(released), out / "store", out / "pca.parquet", out / "clusters.parquet")
    return out, made


def test_sample_read_from_the_released_files_equals_the_store_rows(released, fused):
    out, _ = fused
    store = VectorStore.open(out / "store")
    sample = FitSample.draw(len(store), 400, seed=1, run_length=7)
    # the sample spans both zips (train rows, then test rows)
    assert sample.positions.min() < 700 <= sample.positions.max()
    from_released = read_sample(Released(released), sample, "bfloat16")
    assert np.array_equal(from_released, store.rows_in_runs(sample))
    assert np.array_equal(from_released, store.rows(sample.positions))


def test_one_pass_makes_what_the_assets_make_one_at_a_time(released, fused, tmp_path):
    out, made = fused
    assert set(made) == {"store", "pca", "clusters"}
    # one at a time: the store alone, then PCA from the store, then clusters from the PCA table
    (tmp_path / "store").mkdir()
    stage = VisualStage(SETTINGS)
    stage.run(Released(released), store_out=tmp_path / "store")
    for name in ("vectors.npy", "photo_id.npy", "split.npy"):
        assert (tmp_path / "store" / name).read_bytes() == (out / "store" / name).read_bytes(), name
    alone = stage.run(VectorStore.open(tmp_path / "store"), pca_out=tmp_path / "pca.parquet")
    stage.clusters_from_table(tmp_path / "pca.parquet", tmp_path / "clusters.parquet")

    # the same sample rows, so the same PCA (up to the float error of another block size)
    assert np.allclose(alone["pca"].components, made["pca"].components, atol=1e-6)
    pca_fused, pca_alone = pd.read_parquet(out / "pca.parquet"), pd.read_parquet(tmp_path / "pca.parquet")
    assert list(pca_fused.columns) == ["photo_id", "split"] + [f"pc_{i:02d}" for i in range(8)]
    assert pca_fused[["photo_id", "split"]].equals(pca_alone[["photo_id", "split"]])
    assert len(pca_fused) == 960 and set(pca_fused["split"]) == {"train", "test"}
    np.testing.assert_allclose(pca_fused.iloc[:, 2:].to_numpy(), pca_alone.iloc[:, 2:].to_numpy(), atol=1e-5)

    # clusters from the fused PCA table: fitted on the same rows as in the pass, so identical
    stage.clusters_from_table(out / "pca.parquet", tmp_path / "clusters_again.parquet")
    assert pd.read_parquet(tmp_path / "clusters_again.parquet").equals(pd.read_parquet(out / "clusters.parquet"))
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert sorted(clusters["k"].unique()) == [4, 9] and clusters.groupby("k")["photo_id"].nunique().eq(960).all()
    # each k's sizes as the result reports them
    for k, (_, sizes) in made["clusters"].items():
        assert np.array_equal(np.bincount(clusters.loc[clusters["k"] == k, "cluster"], minlength=k), sizes)


def test_pca_axes_are_fitted_on_the_sample_rows(released, fused):
    """The fitted mean is the sample's mean (of the values the store keeps), not of every row."""
    out, made = fused
    store = VectorStore.open(out / "store")
    sample = FitSample.draw(len(store), 300, seed=3, run_length=7)
    rows = store.rows(sample.positions[sample.first(300)])
    assert made["pca"].fitted_on == len(rows)
    np.testing.assert_allclose(made["pca"].mean, rows.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-6)


def test_the_bfloat16_store_gives_the_pca_and_clusters_of_the_float32_values(released, tmp_path, monkeypatch):
    """What the encoding check (benchmarks.encoding_check) measures at scale, on the tiny data:
    the PCA axes and the reduced vectors of the rounded values are float32's, and the clusters as
    good (their mean squared distance to the centre)."""
    from dataclasses import replace

    from benchmarks.encoding_check import compare, make

    data = released["train"].path.parent.parent
    reference = make(data, tmp_path / "float32", replace(SETTINGS, encoding="float32"))
    figures = compare(reference, make(data, tmp_path / "bfloat16", replace(SETTINGS, encoding="bfloat16")))
    # measured here: 0.99990 and 3.3e-3 (at demo scale, 192,754 photos of 2048 values: 0.999993 and 4.9e-4)
    assert figures["smallest_axis_cosine"] > 0.999
    assert figures["reduced_rms_difference_over_rms"] < 1e-2
    for k, clusters in figures["clusters"].items():
        assert abs(clusters["spread_over_float32"] - 1) < 0.02, k
    # and the check can tell: values rounded far more coarsely (to whole numbers) move the PCA
    rounded = codec.round_to_encoding
    monkeypatch.setattr(codec, "round_to_encoding", lambda values, encoding: (rounded(values, encoding)[0], np.round(values)))
    worse = compare(reference, make(data, tmp_path / "coarse", replace(SETTINGS, encoding="bfloat16")))
    assert worse["reduced_rms_difference_over_rms"] > 0.1 and worse["smallest_axis_cosine"] < 0.99


def gated(function, gate, done):
    """`function` that starts only once `gate` is set, and sets `done` when it returns or raises."""

    def wrapped(*args):
        gate.wait(timeout=30)
        try:
            return function(*args)
        finally:
            done.set()

    return wrapped


def test_pca_and_clusters_arriving_during_the_pass_give_what_one_would_expect(released, fused, tmp_path, monkeypatch):
    """Small chunks, a PCA fit that ends only after some chunks were consolidated, and KMeans fits
    that end later still: the chunks before each are caught up, the ones after handled as they
    come; the PCA table is the fused one's and every label is the nearest centre's."""
    import re
    import threading
    import time

    from kuai_assets.visual.projection import Assignment

    out, made = fused
    pca_gate, kmeans_gate, pca_done, kmeans_done = (threading.Event() for _ in range(4))
    given = [0]  # rows the projection worker has handed to the assignment
    add = Assignment.add

    def counted_add(self, start, reduced):
        add(self, start, reduced)
        given[0] = self.given

    monkeypatch.setattr(Assignment, "add", counted_add)
    # the PCA fit waits until the pass has consolidated a few chunks, the KMeans fits longer still
    monkeypatch.setattr(stage_module, "fit_pca", gated(stage_module.fit_pca, pca_gate, pca_done))
    monkeypatch.setattr(VisualStage, "_fit_clusters", gated(VisualStage._fit_clusters, kmeans_gate, kmeans_done))
    messages = []

    def progress(message):
        messages.append(message)
        # the pass waits here for the fit it let go (and a moment for its result to be handed over)
        if "visual pass: 300 of" in message:
            pca_gate.set()
            pca_done.wait(timeout=30)
            # the fit thread reports the PCA once it has handed it over
            deadline = time.time() + 30
            while not any(m.startswith("pca_visual_features: fitted") for m in messages) and time.time() < deadline:
                time.sleep(0.01)
        if "visual pass: 600 of" in message:
            # the KMeans fits end once the projection worker has handed on the PCA's 300 (however
            # slow the machine) and while the pass waits here
            deadline = time.time() + 30
            while given[0] < 300 and time.time() < deadline:
                time.sleep(0.01)
            kmeans_gate.set()
            kmeans_done.wait(timeout=30)
            time.sleep(0.2)

    (tmp_path / "store").mkdir()
    stage = VisualStage(SETTINGS, progress, report_every=100, chunk_rows=100)
    again = stage.run(Released(released), tmp_path / "store", tmp_path / "pca.parquet", tmp_path / "clusters.parquet")

    def caught_up(pattern):
        found = [int(m.group(1).replace(",", "")) for m in map(re.compile(pattern).search, messages) if m]
        assert len(found) == 1, messages
        return found[0]

    assert caught_up(r"projecting from row [\d,]+ on \(and the ([\d,]+) before") == 300, messages
    # the fits end once 600 rows are read; the rows read while the projection thread caught up on
    # the PCA's 300 may still wait their turn then, so the assignment catches up on at least those 300
    assert 300 <= caught_up(r"assigning from row [\d,]+ on \(and the ([\d,]+) before") < 960, messages
    for name in ("vectors.npy", "photo_id.npy", "split.npy"):
        assert (tmp_path / "store" / name).read_bytes() == (out / "store" / name).read_bytes(), name
    pca = pd.read_parquet(tmp_path / "pca.parquet")
    assert pca[["photo_id", "split"]].equals(pd.read_parquet(out / "pca.parquet")[["photo_id", "split"]])
    np.testing.assert_allclose(pca.iloc[:, 2:].to_numpy(), pd.read_parquet(out / "pca.parquet").iloc[:, 2:].to_numpy(), atol=1e-5)
    clusters = pd.read_parquet(tmp_path / "clusters.parquet")
    reduced = pca.iloc[:, 2:].to_numpy()
    for k, (model, _) in again["clusters"].items():
        expected = ((reduced[:, None, :] - model.centers[None]) ** 2).sum(axis=2).argmin(axis=1)
        got = clusters.loc[clusters["k"] == k, "cluster"].to_numpy()
        assert (got == expected).mean() > 0.999, k  # ties in float32 may break either way
        np.testing.assert_allclose(model.centers, made["clusters"][k][0].centers, atol=1e-4)


@pytest.mark.parametrize("block_values", [1 << 19, 6])  # one block of distances; blocks of 256 rows
def test_kmeans_finds_separated_groups_and_assigns_the_nearest_centre(monkeypatch, block_values):
    from kuai_assets.ml import kmeans

    monkeypatch.setattr(kmeans, "DISTANCE_BLOCK_VALUES", block_values)
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(6, 5)).astype(np.float32) * 20
    group = rng.integers(6, size=3_000)
    x = truth[group] + rng.normal(size=(3_000, 5)).astype(np.float32)
    model = kmeans.fit_kmeans(x, 6, seed=1)
    labels = model.assign(x)
    # the same partition as the truth (up to the order of the clusters)
    assert len({(g, c) for g, c in zip(group, labels)}) == 6
    brute = ((x[:, None, :] - model.centers[None]) ** 2).sum(axis=2)
    assert np.array_equal(labels, brute.argmin(axis=1))
    # the inertia is the mean squared distance to the nearest centre
    assert model.inertia == pytest.approx(brute.min(axis=1).mean(), rel=1e-4)


def test_the_pass_waits_for_the_pca_rather_than_keep_more_than_its_backlog_allows(released, fused, tmp_path, monkeypatch):

    out, _ = fused
    fit_pca = stage_module.fit_pca
    monkeypatch.setattr(stage_module, "fit_pca", lambda *args: (time.sleep(0.5), fit_pca(*args))[1])
    monkeypatch.setattr(VisualStage, "BACKLOG_BYTES", 1)  # one chunk kept is already too much
    messages = []
    (tmp_path / "store").mkdir()
    stage = VisualStage(SETTINGS, messages.append, report_every=100, chunk_rows=100)
    stage.run(Released(released), tmp_path / "store", tmp_path / "pca.parquet", tmp_path / "clusters.parquet")
    assert "pca_visual_features: projecting from row 100 on (and the 100 before it now)" in messages, messages
    np.testing.assert_allclose(
        pd.read_parquet(tmp_path / "pca.parquet").iloc[:, 2:].to_numpy(),
        pd.read_parquet(out / "pca.parquet").iloc[:, 2:].to_numpy(),
        atol=1e-5,
    )


def test_while_the_projection_thread_catches_up_the_pass_reads_on_and_keeps_the_order(released, fused, tmp_path, monkeypatch):
    """A slow catch-up (here the assignment of the rows projected before the KMeans fits ended,
    made to last until the pass has read its last row): the chunks that come meanwhile are kept
    and projected together after it, so the pass reads on to its last row during the catch-up,
    and the PCA table and the clusters are still the fused pass's, row for row."""
    import threading

    from kuai_assets.ml.kmeans import KMeansModel
    from kuai_assets.ml.pca import PcaModel
    from kuai_assets.visual.projection import Assignment

    out, made = fused
    assign, catch_up = KMeansModel.assign, Assignment.catch_up
    read_by_then = []
    rows_read = [0]
    catching_up, all_read = threading.Event(), threading.Event()

    def marked_catch_up(self):
        catching_up.set()
        try:
            catch_up(self)
        finally:
            catching_up.clear()

    def slow_catch_up(self, x, *args):
        # the catch-up's assignments (however many rows the projection worker had handed on by
        # then: on a loaded machine one chunk, or none) last until the pass has read its last row;
        # a pass that waited for the catch-up would never get there, and this gives up after 10 s
        if catching_up.is_set():
            all_read.wait(timeout=10)
            read_by_then.append(rows_read[0])
        return assign(self, x, *args)

    monkeypatch.setattr(Assignment, "catch_up", marked_catch_up)
    monkeypatch.setattr(KMeansModel, "assign", slow_catch_up)
    # and each chunk's projection takes a while: the reader must not reuse a chunk's array
    # while its projection still reads it, catch-up or not
    transform = PcaModel.transform
    monkeypatch.setattr(PcaModel, "transform", lambda self, x: (time.sleep(0.05), transform(self, x))[1])
    fits_may_end, fits_ended = threading.Event(), threading.Event()
    # the fits end once the pass has read 300 rows
    monkeypatch.setattr(VisualStage, "_fit_clusters", gated(VisualStage._fit_clusters, fits_may_end, fits_ended))
    messages = []

    def progress(message):
        messages.append(message)
        if message.startswith("visual pass: "):
            rows_read[0] = int(message.split()[2].replace(",", ""))
            if rows_read[0] == 300:
                fits_may_end.set()
                fits_ended.wait(timeout=30)
            if rows_read[0] == 960:
                all_read.set()

    (tmp_path / "store").mkdir()
    stage = VisualStage(SETTINGS, progress, report_every=100, chunk_rows=100)
    again = stage.run(Released(released), tmp_path / "store", tmp_path / "pca.parquet", tmp_path / "clusters.parquet")
    assert any(m.startswith("video_clusters: assigning from row") for m in messages), messages
    # both ks' catch-ups ran while the pass read on: it had read every row by the end of them
    assert len(read_by_then) == 2 and read_by_then[-1] == 960, (read_by_then, messages)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "pca.parquet"), pd.read_parquet(out / "pca.parquet"), atol=1e-5)
    assert pd.read_parquet(tmp_path / "clusters.parquet").equals(pd.read_parquet(out / "clusters.parquet"))
    for k, (model, sizes) in again["clusters"].items():
        np.testing.assert_allclose(model.centers, made["clusters"][k][0].centers, atol=1e-4)
