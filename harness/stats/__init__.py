"""How sure a figure is: confidence intervals and paired significance tests (`intervals`), the t
interval over seeds or folds (`t_interval`), the paired bootstrap of a ratio over clusters (`cluster_bootstrap`:
a language model's windows of characters), and the Holm adjustment for several tests (`multiple_testing`)."""

from harness.stats.cluster_bootstrap import paired_ratio_bootstrap
from harness.stats.intervals import (
    batched_precision_recall_f1,
    bootstrap_ci,
    confmat_bootstrap,
    mcnemar_test,
    paired_bootstrap_ci,
    paired_difference_ci,
    percentile_interval,
    resample_confmat,
    wilson_interval,
)
from harness.stats.multiple_testing import holm_adjust
from harness.stats.t_interval import student_t_cdf, student_t_quantile, t_interval

__all__ = [
    "batched_precision_recall_f1",
    "bootstrap_ci",
    "confmat_bootstrap",
    "holm_adjust",
    "mcnemar_test",
    "paired_bootstrap_ci",
    "paired_difference_ci",
    "paired_ratio_bootstrap",
    "percentile_interval",
    "resample_confmat",
    "student_t_cdf",
    "student_t_quantile",
    "t_interval",
    "wilson_interval",
]
