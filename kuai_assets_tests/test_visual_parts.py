"""The stages of the visual pass, each alone (kuai_assets.visual): the codec, the store writer and
reader, the sample read, projection and assignment against numpy, and the bounded queues."""

import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kuai_assets.formats.layout import VisualSource
from kuai_assets.formats.released import DataFormatError
from kuai_assets.ml.kmeans import fit_kmeans
from kuai_assets.ml.pca import fit_pca
from kuai_assets.visual import codec
from kuai_assets.visual.flow import BoundedQueue, QueueClosed, Worker
from kuai_assets.visual.projection import Assignment, ChunkToProject, Projection, ReducedWriter, read_reduced
from kuai_assets.visual.sampling import FitSample, read_sample
from kuai_assets.visual.stage import PcaBacklog
from kuai_assets.visual.store import StoreWriter, VectorStore


def vectors(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)) * rng.uniform(0.01, 100, size=dim)).astype(np.float32)


# -- codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["bfloat16", "float16", "float32"])
def test_codec_round_trip_keeps_what_the_encoding_can(encoding):
    x = vectors()
    stored, values = codec.round_to_encoding(x.copy(), encoding)
    assert stored.dtype == codec.ENCODINGS[encoding]
    # what later steps read back is what the pass saw
    assert np.array_equal(codec.decode(stored, encoding), values)
    assert np.array_equal(codec.encode(x.copy(), encoding), stored)
    relative = np.abs(values - x) / np.abs(x)
    bound = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 0.0}[encoding]
    assert relative.max() <= bound * (1 + 1e-6)
    if encoding == "bfloat16":
        assert relative.max() > 2.0**-12  # it does round (8 bits of precision)


def test_bfloat16_rounds_to_nearest_and_rounds_in_place():
    step = 2.0**-7  # bfloat16's step just above 1
    x = np.array([[1 + 0.49 * step, 1 + 0.51 * step, -(1 + 0.51 * step), 3.0]], dtype=np.float32)
    stored, values = codec.round_to_encoding(x, "bfloat16")
    assert values.tolist() == [[1.0, 1 + step, -(1 + step), 3.0]]
    assert values is x  # the chunk we own holds the rounded values
    assert stored.tolist() == [[0x3F80, 0x3F81, 0xBF81, 0x4040]]


def test_values_beyond_an_encoding_are_refused_naming_the_photo():
    photo_id = np.array([11, 12, 13])
    big = np.ones((3, 4), dtype=np.float32)
    big[1, 2] = 3.399e38  # within half a bfloat16 step of float32's largest: rounds to infinity
    stored, _ = codec.round_to_encoding(big.copy(), "bfloat16")
    with pytest.raises(DataFormatError, match=r"exceed the bfloat16 range.*") as error:
        codec.check_rounded(stored, photo_id, "train.zip", "bfloat16")
    assert "12" in str(error.value) and "train.zip" in str(error.value)
    codec.check_rounded(codec.round_to_encoding(np.ones((3, 4), np.float32), "bfloat16")[0], photo_id, "x", "bfloat16")
    half = np.ones((3, 4), dtype=np.float32)
    half[2, 0] = 70_000.0
    with pytest.raises(DataFormatError, match="float16 range") as error:
        codec.check_vectors(half, photo_id, "train.zip", "float16")
    assert "13" in str(error.value)
    codec.check_vectors(half, photo_id, "train.zip", "bfloat16")  # fine in bfloat16
    half[0, 1] = np.nan
    with pytest.raises(DataFormatError, match="NaN or infinity") as error:
        codec.check_vectors(half, photo_id, "train.zip", "bfloat16")
    assert "11" in str(error.value)


# -- the store ------------------------------------------------------------------------------


def fake_source(tmp_path, total, dim):
    """What StoreWriter.finish reads of a Released: its sources, total, dim and readers' lengths."""
    folder = tmp_path / "train_folder"
    folder.mkdir(exist_ok=True)
    return SimpleNamespace(
        sources={"train": VisualSource(folder, "folder")}, total=total, dim=dim, readers={"train": list(range(total))}
    )


@pytest.mark.parametrize("encoding", ["bfloat16", "float32"])
def test_store_writer_and_reader(tmp_path, encoding):
    x = vectors(1_000, 24)
    out = tmp_path / "store"
    out.mkdir()
    writer = StoreWriter(out, len(x), encoding)
    for start in range(0, len(x), 128):  # more chunks than the writer lets wait
        writer.write(codec.encode(x[start : start + 128].copy(), encoding))
    writer.close()
    photo_id = np.arange(5_000, 6_000, dtype=np.int64)
    split = (np.arange(1_000) >= 800).astype(np.int8)
    meta = writer.finish(fake_source(tmp_path, 1_000, 24), photo_id, split, 1.0)
    assert meta["vectors"] == 1_000 and meta["dim"] == 24 and meta["encoding"] == encoding

    store = VectorStore.open(out)
    expected = codec.decode(codec.encode(x.copy(), encoding), encoding)
    assert len(store) == 1_000 and store.dim == 24 and store.encoding == encoding
    assert np.array_equal(store.photo_id, photo_id) and np.array_equal(store.split, split)
    assert np.array_equal(store.rows(np.array([3, 999, 0])), expected[[3, 999, 0]])
    blocks = list(store.row_blocks(300))
    assert [start for start, _ in blocks] == [0, 300, 600, 900]
    assert np.array_equal(np.concatenate([b for _, b in blocks]), expected)
    sample = FitSample.draw(1_000, 200, seed=4, run_length=16)
    assert np.array_equal(read_sample(store, sample, encoding), expected[sample.positions])


def test_store_writer_refuses_a_photo_with_two_vectors(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    writer = StoreWriter(out, 4, "bfloat16")
    writer.write(codec.encode(vectors(4, 8), "bfloat16"))
    writer.close()
    with pytest.raises(DataFormatError, match="more than one vector") as error:
        writer.finish(fake_source(tmp_path, 4, 8), np.array([1, 2, 7, 7]), np.zeros(4, np.int8), 1.0)
    assert "7" in str(error.value) and "train_folder" in str(error.value)
    assert not (out / "photo_id.npy").exists()


# -- projection and assignment --------------------------------------------------------------


def test_projection_and_assignment_match_a_direct_numpy_computation(tmp_path):
    x = vectors(900, 32, seed=1)
    stored, x = codec.round_to_encoding(x, "bfloat16")
    model = fit_pca(x[::3], 6)
    pca, fits = Future(), Future()
    pca.set_result(model)
    reduced_direct = ((x.astype(np.float64) - model.mean) @ model.components.T.astype(np.float64)).astype(np.float32)
    kmeans = {k: fit_kmeans(reduced_direct[::2], k, seed=0) for k in (3, 7)}
    photo_id = np.arange(100, 1_000, dtype=np.int64)
    split = (np.arange(900) >= 600).astype(np.int8)
    messages = []
    assignment = Assignment(fits, 900, 6, [3, 7], messages.append)
    writer = ReducedWriter(tmp_path / "pca.parquet", 6)
    writer.ROWS = 250  # several row groups
    project = Projection(pca, "bfloat16", writer, photo_id, split, assignment)
    # chunks of each kind: projected by a reader, as stored (encoded), as float32
    project(ChunkToProject(0, reduced=model.transform(x[:200])))
    project(ChunkToProject(200, stored[200:400], True))
    fits.set_result(kmeans)  # the fits end here: the 400 rows before are assigned at once
    project(ChunkToProject(400, x[400:650], False))
    project(ChunkToProject(650, stored[650:900], True))
    writer.close()
    labels, models = assignment.finish()
    assert messages[0] == "video_clusters: assigning from row 400 on (and the 400 before it now)"

    ids, reduced = read_reduced(tmp_path / "pca.parquet")
    table = pd.read_parquet(tmp_path / "pca.parquet")
    assert np.array_equal(ids, photo_id) and table["split"].tolist() == ["train"] * 600 + ["test"] * 300
    np.testing.assert_allclose(reduced, reduced_direct, rtol=1e-4, atol=1e-3 * np.abs(reduced_direct).max())
    for k, kmeans_model in models.items():
        distances = ((reduced[:, None, :].astype(np.float64) - kmeans_model.centers[None]) ** 2).sum(axis=2)
        assert (labels[k] == distances.argmin(axis=1)).mean() > 0.998, k  # float32 ties may break either way
    with pytest.raises(ValueError, match="expected row 900, got 0"):
        assignment.add(0, reduced[:10])


# -- bounded queues -------------------------------------------------------------------------


def test_bounded_queue_makes_the_producer_wait_and_admits_one_large_item():
    queue = BoundedQueue(limit=100)
    queue.put("big", 500)  # an empty queue takes any item
    waited = threading.Event()

    def producer():
        queue.put("a", 60)  # must wait: 500 bytes are waiting
        waited.set()
        queue.put("b", 60)  # must wait again: 60 + 60 > 100

    thread = threading.Thread(target=producer)
    thread.start()
    time.sleep(0.2)
    assert not waited.is_set() and len(queue) == 1  # back-pressure
    assert queue.get() == "big"
    assert waited.wait(5)
    time.sleep(0.2)
    assert len(queue) == 1 and queue.nbytes == 60  # "b" still waits
    assert queue.get() == "a" and queue.get() == "b"
    thread.join(5)
    assert queue.waits == 2


def test_worker_bounds_what_waits_and_hands_its_error_back():
    seen, peak = [], [0]

    def slow(item):
        peak[0] = max(peak[0], worker.queue.nbytes)
        time.sleep(0.01)
        seen.append(item)

    worker = Worker("test", slow, limit=30)
    for i in range(20):
        worker.put(i, 10)
        peak[0] = max(peak[0], worker.queue.nbytes)
    worker.finish()
    assert seen == list(range(20)) and peak[0] <= 30 and worker.queue.waits > 0

    def failing(item):
        if item == 3:
            raise RuntimeError("bad chunk 3")

    worker = Worker("test", failing, limit=10)
    with pytest.raises(RuntimeError, match="bad chunk 3"):
        for i in range(1_000):
            worker.put(i, 10)
            time.sleep(0.001)
    with pytest.raises(RuntimeError, match="bad chunk 3"):
        worker.finish()
    closed = BoundedQueue(10)
    closed.put(0, 1)
    closed.close()
    with pytest.raises(QueueClosed):
        closed.put(1, 1)
    with pytest.raises(QueueClosed):
        closed.get()  # what was waiting is dropped

    # stopped (the feeding thread failed): the items waiting are not handled
    release, holding, handled = threading.Event(), threading.Event(), []
    worker = Worker("test", lambda item: (holding.set(), release.wait(5), handled.append(item)), limit=100)
    for i in range(3):
        worker.put(i, 10)
    assert holding.wait(5)  # the worker holds item 0
    threading.Timer(0.2, release.set).start()
    worker.stop()
    assert handled == [0]


def test_pca_backlog_keeps_chunks_until_the_pca_and_then_waits_for_it():
    pca = Future()
    handed = []
    worker = Worker("test", handed.append, limit=1 << 20)
    messages = []
    backlog = PcaBacklog(pca, limit=150, worker=worker, progress=messages.append)
    chunk = lambda start: ChunkToProject(start, np.zeros((10, 10), np.uint8), True)  # 100 bytes each
    backlog.hand_on(chunk(0))
    backlog.hand_on(chunk(10))  # 100 bytes kept: not more than the limit, so kept too
    assert len(backlog.kept) == 2 and handed == []
    model = object()
    threading.Timer(0.3, pca.set_result, [model]).start()
    started = time.time()
    backlog.hand_on(chunk(20))  # 200 bytes kept: waits for the PCA
    assert time.time() - started > 0.2 and backlog.model is model
    backlog.finish(30)
    worker.finish()
    assert [c.start for c in handed] == [0, 10, 20] and backlog.kept == []
    assert messages == ["pca_visual_features: projecting from row 20 on (and the 20 before it now)"]


def test_a_failing_projection_stops_the_pass_with_its_error(tmp_path, monkeypatch):
    """The worker's error reaches the pass (which stops reading) instead of leaving it waiting."""
    import zipfile

    from kuai_assets.formats import layout
    from kuai_assets.visual.settings import VisualSettings
    from kuai_assets.visual.sources import Released
    from kuai_assets.visual.stage import VisualStage
    from kuai_assets_tests.handmade import write_dataset

    root = write_dataset(tmp_path / "data", n_train_photos=300, n_test_photos=100, dim=12, compression=zipfile.ZIP_STORED)
    sources = {split: layout.find_visual_source_checked(root, split) for split in layout.SPLITS}
    handle = Projection.__call__

    def failing(self, chunk):
        if chunk.start >= 100:
            raise RuntimeError(f"cannot project row {chunk.start}")
        handle(self, chunk)

    monkeypatch.setattr(Projection, "__call__", failing)
    messages = []
    (tmp_path / "store").mkdir()
    stage = VisualStage(VisualSettings(dimensions=4, fit_sample=100, ks=(3,), run_length=5), messages.append, 50, 50)
    started = time.time()
    with pytest.raises(RuntimeError, match="cannot project row 100"):
        stage.run(Released(sources), tmp_path / "store", tmp_path / "pca.parquet", tmp_path / "clusters.parquet")
    assert time.time() - started < 30
    assert not (tmp_path / "clusters.parquet").exists() and not (tmp_path / "store" / "meta.json").exists()
