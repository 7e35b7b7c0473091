"""faiss k-means against scikit-learn KMeans on a dataset's train features: same data, k and iterations.

Two settings: per class with k = IPC (what the prototypes stage runs) and the whole train split at once.
Both libraries get one random initialisation (faiss samples k points; sklearn `init="random"`), `niter`
Lloyd iterations (sklearn with tol=0, so it stops early only when the assignment no longer changes), and
the inertia of both is recomputed here the same way (float64 squared distances to the nearest centroid).

    RSDISTILL_DATA=/work/shared/datasets python scripts/bench_kmeans.py --dataset eurosat

Features come from the same cache as `rsdistill prototypes`, so a dataset is encoded once. `--threads N`
gives both libraries N threads (OpenMP threads spin while waiting: on a busy machine fewer can be faster).
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info, threadpool_limits

from rsdistill.data.sources import load_dataset
from rsdistill.prototypes import encode_split, load_encoder
from rsdistill.prototypes.kmeans import faiss_kmeans


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(np.sum(cdist(x.astype(np.float64), centroids.astype(np.float64), "sqeuclidean").min(axis=1)))


def run_both(x: np.ndarray, k: int, niter: int, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    centroids = faiss_kmeans(x, k, niter=niter, nredo=1, seed=seed, gpu=False)
    faiss_s = time.perf_counter() - start
    start = time.perf_counter()
    model = KMeans(k, init="random", n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd", random_state=seed)
    model.fit(x)
    sklearn_s = time.perf_counter() - start
    return {
        "faiss_s": faiss_s,
        "sklearn_s": sklearn_s,
        "faiss_inertia": inertia(x, centroids),
        "sklearn_inertia": inertia(x, model.cluster_centers_),
        "sklearn_iterations": int(model.n_iter_),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ipc", type=int, default=10, help="k of the per-class clustering")
    parser.add_argument("--k-all", type=int, default=100, help="k of the whole-split clustering")
    parser.add_argument("--niter", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="threads for both libraries (default: their own default)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)

    dataset = load_dataset(args.dataset, root=args.data_root)
    features = encode_split(dataset, "train", args.resolution, load_encoder(args.encoder))
    x = np.ascontiguousarray(features.features, dtype=np.float32)
    blas = sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()})
    print(
        f"{args.dataset} train: {x.shape[0]} x {x.shape[1]} {args.encoder} features; niter {args.niter}, "
        f"seed {args.seed}; faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"sklearn threadpools {', '.join(blas)}"
    )

    per_class = [
        run_both(x[features.labels == label], args.ipc, args.niter, args.seed)
        for label in range(len(dataset.classes))
    ]
    results = {
        f"per class, k={args.ipc} ({len(dataset.classes)} runs)": {
            key: sum(r[key] for r in per_class) for key in per_class[0] if key != "sklearn_iterations"
        }
        | {"sklearn_iterations": min(r["sklearn_iterations"] for r in per_class)},
        f"whole split, k={args.k_all}": run_both(x, args.k_all, args.niter, args.seed),
    }
    print(
        f"\n{'setting':<30} {'faiss s':>9} {'sklearn s':>10} {'sklearn/faiss':>14} "
        f"{'faiss inertia':>14} {'sklearn inertia':>16} {'sk iters':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<30} {r['faiss_s']:>9.2f} {r['sklearn_s']:>10.2f} {r['sklearn_s'] / r['faiss_s']:>14.2f} "
            f"{r['faiss_inertia']:>14.2f} {r['sklearn_inertia']:>16.2f} {r['sklearn_iterations']:>9}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
