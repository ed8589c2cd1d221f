"""How sure a figure is: confidence intervals and paired significance tests (see `intervals`)."""

from harness.stats.intervals import (
    batched_precision_recall_f1,
    bootstrap_ci,
    confmat_bootstrap,
    mcnemar_test,
    paired_bootstrap_ci,
    percentile_interval,
    resample_confmat,
    wilson_interval,
)

__all__ = [
    "batched_precision_recall_f1",
    "bootstrap_ci",
    "confmat_bootstrap",
    "mcnemar_test",
    "paired_bootstrap_ci",
    "percentile_interval",
    "resample_confmat",
    "wilson_interval",
]
