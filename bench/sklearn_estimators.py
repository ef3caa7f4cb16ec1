"""mlpcore.sklearn's estimators against scikit-learn's own, the same data and hyperparameters, in one run:
test accuracy (R^2 for the regressor) over seeds, and the fit time of each as a ratio.

    python bench/sklearn_estimators.py            # Fashion-MNIST (300, 300) adam 20 epochs, 3 seeds; regression
    python bench/sklearn_estimators.py --quick    # every code path in seconds (CI)

Classification: Fashion-MNIST (random data of its shape if it is not installed), inputs scaled to [0, 1],
``hidden_layer_sizes=(300, 300)``, adam, batch_size "auto" (200), every epoch run (tol=0 and
n_iter_no_change past max_iter, so that both train the same number of epochs). Regression: scikit-learn's
make_friedman1 (20,000 rows, 10 features, noise 1.0), standardised, ``(100, 100)``, adam. Both estimators in
float64 (scikit-learn's default) and float32 (X given as float32; mlpcore's ``dtype="float32"``). The two
take turns, seed after seed, so their ratio is of times measured side by side; mlpcore uses the cores as
threads=None does, scikit-learn NumPy's BLAS threads.
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np


def fashion_mnist(quick):
    from mlpcore import datasets
    try:
        (X, y), (X_test, y_test) = datasets.load_fashion_mnist(dtype="float64", download=False)
        source = "Fashion-MNIST"
    except (FileNotFoundError, OSError, ValueError):
        rng = np.random.default_rng(0)
        X, y = rng.random((60000, 784)), rng.integers(0, 10, 60000)
        X_test, y_test = rng.random((10000, 784)), rng.integers(0, 10, 10000)
        source = "random data of Fashion-MNIST's shape"
    if quick:
        X, y, X_test, y_test = X[:2000], y[:2000], X_test[:500], y_test[:500]
    return source, (X, y, X_test, y_test)


def friedman(quick):
    from sklearn.datasets import make_friedman1
    n = 2000 if quick else 20000
    X, y = make_friedman1(n_samples=n + n // 4, n_features=10, noise=1.0, random_state=0)
    X = (X - X[:n].mean(axis=0)) / X[:n].std(axis=0)
    y = (y - y[:n].mean()) / y[:n].std()
    return "make_friedman1", (X[:n], y[:n], X[n:], y[n:])


def run_case(make_estimators, data, dtype, seeds):
    """{impl: {"seconds": [...], "score": [...]}} with the two impls taking turns."""
    from sklearn.exceptions import ConvergenceWarning
    X, y, X_test, y_test = data
    X, X_test = X.astype(dtype), X_test.astype(dtype)
    results = {}
    for seed in seeds:
        for impl, estimator in make_estimators(seed, dtype).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                started = time.perf_counter()
                estimator.fit(X, y)
                seconds = time.perf_counter() - started
            if estimator.coefs_[0].dtype != dtype:
                raise AssertionError(f"{impl} trained in {estimator.coefs_[0].dtype} on {dtype} input")
            entry = results.setdefault(impl, {"seconds": [], "score": [], "epochs": []})
            entry["seconds"].append(seconds)
            entry["score"].append(float(estimator.score(X_test, y_test)))
            entry["epochs"].append(int(estimator.n_iter_))
    return results


def estimators(kind, hidden, epochs):
    import sklearn.neural_network as theirs
    import mlpcore.sklearn as ours

    def make(seed, dtype):
        settings = dict(hidden_layer_sizes=hidden, solver="adam", max_iter=epochs, tol=0.0,
                        n_iter_no_change=epochs + 1, random_state=seed)
        return {"scikit-learn": getattr(theirs, kind)(**settings),
                "mlpcore": getattr(ours, kind)(**settings, dtype=np.dtype(dtype).name)}
    return make


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 2 epochs, 1 seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default=None, help="folder for sklearn_estimators.json")
    args = parser.parse_args(argv)
    import sklearn
    import mlpcore
    epochs, seeds = (2, [0]) if args.quick else (args.epochs, list(range(args.seeds)))
    cases = [("MLPClassifier", (300, 300), fashion_mnist(args.quick), "accuracy"),
             ("MLPRegressor", (100, 100), friedman(args.quick), "R^2")]
    print(f"scikit-learn {sklearn.__version__} against mlpcore {mlpcore.__version__}; {epochs} epochs, "
          f"seeds {seeds}, {os.cpu_count()} cores")
    print(f"{'estimator':<14} {'data':<22} {'dtype':<8} {'sklearn score':>16} {'mlpcore score':>16} "
          f"{'sklearn s':>10} {'mlpcore s':>10} {'speed-up':>9}")
    report = []
    for kind, hidden, (source, data), metric in cases:
        for dtype in ("float64", "float32"):
            results = run_case(estimators(kind, hidden, epochs), data, np.dtype(dtype), seeds)
            theirs, ours = results["scikit-learn"], results["mlpcore"]
            if theirs["epochs"] != ours["epochs"]:
                raise AssertionError(f"epochs differ: scikit-learn {theirs['epochs']}, mlpcore {ours['epochs']}")
            ratios = [a / b for a, b in zip(theirs["seconds"], ours["seconds"])]

            def score(entry):
                spread = f"+-{statistics.stdev(entry['score']):.4f}" if len(entry["score"]) > 1 else ""
                return f"{statistics.mean(entry['score']):.4f}{spread}"

            print(f"{kind:<14} {source[:22]:<22} {dtype:<8} {score(theirs):>16} {score(ours):>16} "
                  f"{statistics.median(theirs['seconds']):>10.2f} {statistics.median(ours['seconds']):>10.2f} "
                  f"{statistics.median(ratios):>8.2f}x")
            report.append({"estimator": kind, "data": source, "dtype": dtype, "metric": metric,
                           "epochs": epochs, "seeds": seeds, "results": results,
                           "speed_up_median": statistics.median(ratios)})
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sklearn_estimators.json"), "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
