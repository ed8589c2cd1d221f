"""How long a bootstrap interval takes: 1,000 resamples of 10,000 test predictions on the CPU.

    python benchmarks/bootstrap.py            # prints seconds per interval, median of 5 runs, per metric

The predictions are synthetic (10 classes, 99 % correct, the size of the MNIST test split): the time
depends on the number of samples and classes, not on what the labels are.
"""

from __future__ import annotations

import statistics
import time

import torch

from harness.metrics import Accuracy, F1Score, MeanSquaredError
from harness.stats import bootstrap_ci


def main() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 10, (10_000,), generator=g)
    preds = torch.where(torch.rand(10_000, generator=g) < 0.99, target, (target + 1) % 10)
    regression = (torch.randn(10_000, generator=g), torch.randn(10_000, generator=g))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1,000 resamples of 10,000 samples")
    cases = [("accuracy (confusion-matrix path)", Accuracy(10), preds, target),
             ("macro F1 (confusion-matrix path)", F1Score(10, average="macro"), preds, target),
             ("mean squared error (one update per resample)", MeanSquaredError(), *regression)]
    for name, metric, p, t in cases:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            bootstrap_ci(metric, p, t, n_resamples=1000, seed=0)
            times.append(time.perf_counter() - started)
        print(f"{name}: {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
