"""How long a bootstrap interval takes: 1,000 resamples of 10,000 test predictions on the CPU.

    python benchmarks/bootstrap.py            # prints seconds per interval, median of 5 runs, per metric
    python benchmarks/bootstrap.py --repeats 1 --threads 1   # on a machine shared with other jobs

The predictions are synthetic (10 classes, 99 % correct, the size of the MNIST test split): the time
depends on the number of samples and classes, not on what the labels are.

The score metrics (AUROC, average precision, calibration error) take a weighted pass over every
resample at once (`harness.stats.score_bootstrap`); each is timed against the loop it replaces, the
metric's own update and compute once per resample, in the same run (on 100 resamples, scaled to 1,000:
the loop's time is linear in the resamples), and the ratio is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from harness.metrics import AUROC, Accuracy, AveragePrecision, CalibrationError, F1Score, MeanSquaredError
from harness.stats import bootstrap_ci

RESAMPLES = 1000
LOOP_RESAMPLES = 100  # the per-resample loop is timed on fewer resamples and scaled: it is linear in them


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times)


def loop_over_resamples(metric, preds: torch.Tensor, target: torch.Tensor, n_resamples: int) -> torch.Tensor:
    """The hand-written bootstrap: the metric's update and compute on each resample in turn."""
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(n_resamples):
        rows = torch.randint(0, target.shape[0], (target.shape[0],), generator=generator)
        metric.reset()
        metric.update(preds[rows], target[rows])
        values.append(metric.compute())
    return torch.stack(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per metric (median, min, max)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice); on a busy machine 1 avoids "
                             "threads waiting on each other")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 10, (10_000,), generator=g)
    preds = torch.where(torch.rand(10_000, generator=g) < 0.99, target, (target + 1) % 10)
    logits = 3 * torch.randn(10_000, 10, generator=g) + 8 * torch.nn.functional.one_hot(preds, 10)
    probs = logits.softmax(dim=1).double()
    regression = (torch.randn(10_000, generator=g), torch.randn(10_000, generator=g))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {RESAMPLES:,} resamples of 10,000 samples")
    cases = [("accuracy (confusion-matrix path)", Accuracy(10), preds, target),
             ("macro F1 (confusion-matrix path)", F1Score(10, average="macro"), preds, target),
             ("mean squared error (one update per resample)", MeanSquaredError(), *regression)]
    for name, metric, p, t in cases:
        median, low, high = median_seconds(lambda m=metric, p=p, t=t: bootstrap_ci(m, p, t, n_resamples=RESAMPLES),
                                           args.repeats)
        print(f"{name}: {median:.3f} s (min {low:.3f}, max {high:.3f})")
    scores = [("AUROC, macro over 10 classes", AUROC(10)), ("average precision, macro", AveragePrecision(10)),
              ("ECE, 15 bins", CalibrationError(10))]
    for name, metric in scores:
        median, low, high = median_seconds(lambda m=metric: bootstrap_ci(m, probs, target, n_resamples=RESAMPLES),
                                           args.repeats)
        loop, _, _ = median_seconds(lambda m=metric: loop_over_resamples(m, probs, target, LOOP_RESAMPLES),
                                    args.repeats)
        per_resample_loop = loop * RESAMPLES / LOOP_RESAMPLES
        print(f"{name} (weighted pass): {median:.3f} s (min {low:.3f}, max {high:.3f}); "
              f"update per resample: {per_resample_loop:.2f} s, {per_resample_loop / median:.1f}x the time")


if __name__ == "__main__":
    main()
