"""Our code against the kept libraries it could be replaced by, measured in one run.

    python -m benchmarks.libraries [--photos 20000] [--dim 2048]

Prints, for each place where the platform keeps code of its own beside a library that does the
same job, the wall time of both on the same input and whether their results agree:

- KMeans fit (ml.kmeans.fit_kmeans against sklearn.cluster.KMeans, k-means++ with one init and
  the same iteration cap) on 128,000 x 64 reduced vectors drawn from 200 latent clusters, at k =
  100 and 500, and the assignment of 1,000,000 vectors (ml.kmeans.nearest against
  KMeans.predict); mean squared distance to the centre beside each time;
- PCA fit (ml.pca.fit_pca, scikit-learn's covariance solver, against sklearn's randomized
  solver) on 50,000 x 2048 vectors: the exact solver is what the platform uses;
- reading a zip of .npy vectors as released (formats.visual_zip.ZipVectors against
  zipfile + numpy.load per member, the obvious way), over a zip this script writes;
- the AUC (ml.metrics.roc_auc, the rank form over scipy.stats.rankdata, against scikit-learn's
  roc_auc_score), 101 times on 150,000 and 340,000 rows: one blend-weight choice.

Every fit runs with BLAS on one thread (as the visual stage does). Machines here are shared and
noisy: read the ratios within one run.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def clustered(rng: np.random.Generator, n: int, dim: int, centres: int = 200) -> np.ndarray:
    centre = rng.standard_normal((centres, dim)).astype(np.float32) * 3
    return (centre[rng.integers(0, centres, n)] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def kmeans_rows(rng: np.random.Generator) -> list[dict]:
    from sklearn.cluster import KMeans

    from kuai_assets.ml.kmeans import fit_kmeans, nearest

    fit = clustered(rng, 128_000, 64)
    everything = clustered(rng, 1_000_000, 64)
    rows = []
    for k in (100, 500):
        ours, ours_s = timed(lambda: fit_kmeans(fit, k, seed=0))
        library, library_s = timed(
            lambda: KMeans(k, init="k-means++", n_init=1, max_iter=30, tol=1e-4, random_state=0).fit(fit)
        )
        rows.append(
            {"what": f"KMeans fit, 128,000 x 64, k={k}", "ours_s": ours_s, "library_s": library_s,
             "agreement": f"mean sq. distance ours {ours.inertia:.3f}, sklearn {library.inertia_ / len(fit):.3f}"}
        )
        _, ours_s = timed(lambda: nearest(everything, ours.centers))
        _, library_s = timed(lambda: library.predict(everything))
        same = float((nearest(everything[:100_000], library.cluster_centers_)[0] == library.predict(everything[:100_000])).mean())
        rows.append(
            {"what": f"KMeans assignment, 1,000,000 x 64, k={k}", "ours_s": ours_s, "library_s": library_s,
             "agreement": f"same centre for {same:.2%} of 100,000 vectors (same centres)"}
        )
    return rows


def pca_rows(rng: np.random.Generator, photos: int, dim: int) -> list[dict]:
    from sklearn.decomposition import PCA

    from kuai_assets.ml.pca import fit_pca

    x = (rng.standard_normal((photos, 64)) @ rng.standard_normal((64, dim))).astype(np.float32)
    x += rng.standard_normal(x.shape).astype(np.float32) * 0.1
    exact, exact_s = timed(lambda: fit_pca(x, 64))
    randomized, randomized_s = timed(lambda: PCA(64, svd_solver="randomized", random_state=0).fit(x))
    cosine = float(np.abs((exact.components * randomized.components_).sum(axis=1)).min())
    return [
        {"what": f"PCA fit, {photos:,} x {dim}, 64 axes (exact vs randomized)", "ours_s": exact_s,
         "library_s": randomized_s, "agreement": f"smallest axis |cosine| {cosine:.6f}"}
    ]


def zip_rows(rng: np.random.Generator, photos: int, dim: int) -> list[dict]:
    from kuai_assets.formats.visual_zip import ZipVectors

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "final_visual_train.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for photo_id in range(photos):
                buffer = io.BytesIO()
                np.save(buffer, rng.standard_normal((1, dim)).astype(np.float32))
                archive.writestr(f"final_visual_train/{photo_id}", buffer.getvalue())

        def ours() -> float:
            total = 0.0
            for chunk in ZipVectors(path).chunks():
                total += float(chunk.vectors.sum())
            return total

        def obvious() -> float:
            total = 0.0
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    total += float(np.load(io.BytesIO(archive.read(name))).sum())
            return total

        ours_total, ours_s = timed(ours)
        obvious_total, obvious_s = timed(obvious)
    return [
        {"what": f"zip of {photos:,} .npy vectors ({dim}-d), read whole", "ours_s": ours_s, "library_s": obvious_s,
         "agreement": f"sums differ by {abs(ours_total - obvious_total) / max(abs(obvious_total), 1):.1e} (relative)"}
    ]


def auc_rows(rng: np.random.Generator) -> list[dict]:
    """The AUC (ml.metrics.roc_auc, ranks) against sklearn.metrics.roc_auc_score, 101 times each
    (one blend-weight choice) on validation-sized rows, scores rounded to give ties."""
    from sklearn.metrics import roc_auc_score

    from kuai_assets.ml.metrics import roc_auc

    rows = []
    for n in (150_000, 340_000):
        label = rng.random(n) < 0.2
        score = np.round(rng.random(n) + 0.3 * label, 4)
        ours, ours_s = timed(lambda: [roc_auc(label, score) for _ in range(101)][-1])
        library, library_s = timed(lambda: [roc_auc_score(label, score) for _ in range(101)][-1])
        rows.append({"what": f"AUC of {n:,} rows, 101 times", "ours_s": ours_s, "library_s": library_s,
                     "agreement": f"differ by {abs(ours - library):.1e}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.libraries", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=20_000, help="vectors in the zip and PCA comparisons")
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(1):
        rows += kmeans_rows(rng)
        rows += pca_rows(rng, max(args.photos, 1_000), args.dim)
    rows += zip_rows(rng, args.photos, args.dim)
    rows += auc_rows(rng)
    print("| what | ours (s) | library (s) | library / ours | agreement |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['what']} | {r['ours_s']:.2f} | {r['library_s']:.2f} | {r['library_s'] / r['ours_s']:.2f}x | {r['agreement']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
