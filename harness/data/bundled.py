"""Small real data sets that ship inside scikit-learn: nothing to download, no data root.

    train, test = load_bundled("sklearn:breast_cancer")  # FeatureTensors: float32 (N, 30), 2 classes
    train, test = load_bundled("sklearn:digits")         # ImageTensors: uint8 (N, 1, 8, 8), 10 classes

Neither set has an official test split, so one is defined here: a stratified 20 %, fold 0 of
`stratified_folds(targets, 5, seed=TEST_SPLIT_SEED)`. The seed is a constant, not `trainer.seed`:
every run, every seed and every cross-validation sees the same test samples. The training split is
the other 80 %; a recipe's `data.val_size` hold-out and `cv`'s folds are drawn from it.

Standardisation statistics come from the training split only, never from the test split:
breast_cancer's mean and std per feature (population std, as scikit-learn's StandardScaler), digits'
one mean and std over all pixels (images standardised like MNIST, one channel). The val hold-out and
the cv folds lie inside that training split, as MNIST's hold-out lies inside the 60,000 images its
published constants were computed on.

scikit-learn is imported only when one of these sets is loaded; it is not needed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.data.datasets import FeatureTensors, ImageTensors
from harness.data.folds import stratified_folds
from harness.errors import HarnessError

TEST_SPLIT_SEED = 0  # fixed: the test split never depends on trainer.seed
TEST_SPLIT_FOLDS = 5  # the test split is 1 of 5 stratified folds: 20 % of every class
INSTALL_HINT = "pip install scikit-learn (or pip install -e '.[sklearn]')"


@dataclass(frozen=True)
class BundledSpec:
    """One data set bundled with scikit-learn."""

    loader: str  # function in sklearn.datasets
    kind: str  # "features" (FeatureTensors) or "images" (ImageTensors)
    samples: int  # what the function returns, checked on load
    description: str  # for the README and messages


BUNDLED: dict[str, BundledSpec] = {
    "sklearn:breast_cancer": BundledSpec("load_breast_cancer", "features", 569,
                                         "569 tumours, 30 features, malignant (212) vs benign (357)"),
    "sklearn:digits": BundledSpec("load_digits", "images", 1797, "1,797 8x8 grey images of digits, pixels 0-16"),
}


def fixed_test_split(targets: torch.Tensor, folds: int = TEST_SPLIT_FOLDS) -> tuple[torch.Tensor, torch.Tensor]:
    """`(train_idx, test_idx)`, sorted int64: the fixed stratified test split of `targets`, 1 of `folds`
    stratified folds (20 % by default) drawn with the constant `TEST_SPLIT_SEED`."""
    held_out = stratified_folds(targets, folds, seed=TEST_SPLIT_SEED)
    return torch.cat(held_out[1:]).sort().values, held_out[0]


def load_bundled(name: str) -> tuple[FeatureTensors | ImageTensors, FeatureTensors | ImageTensors]:
    """The training and test splits of bundled data set `name`, both carrying the training split's statistics."""
    if name not in BUNDLED:
        raise HarnessError(f"unknown bundled data set {name!r}: choose one of {', '.join(BUNDLED)}")
    spec = BUNDLED[name]
    try:
        import sklearn.datasets  # noqa: PLC0415  (optional: only these two data sets need scikit-learn)
    except ImportError:
        raise HarnessError(f"data.name={name} needs scikit-learn, which is not installed: {INSTALL_HINT}") from None
    bunch = getattr(sklearn.datasets, spec.loader)()
    targets = torch.as_tensor(bunch.target, dtype=torch.int64)
    if len(targets) != spec.samples:
        raise HarnessError(f"{name}: scikit-learn gave {len(targets)} samples, expected {spec.samples}")
    classes = [str(c) for c in bunch.target_names]
    train_idx, test_idx = fixed_test_split(targets)

    if spec.kind == "features":
        features = torch.as_tensor(bunch.data, dtype=torch.float64)
        mean, std = _mean_std(features[train_idx])
        full = FeatureTensors(features.float(), targets, classes, mean, std)
    else:
        # 0-16 integers as scikit-learn stores them; kept as uint8, so the stats are on the pixel/255 scale
        # the tensor path divides by, and (pixel/255 - mean)/std is standardised exactly.
        images = torch.as_tensor(bunch.images).round().to(torch.uint8).unsqueeze(1)
        mean, std = _mean_std(images[train_idx].double().reshape(-1, 1) / 255.0)  # one channel: all pixels
        full = ImageTensors(images.contiguous(), targets, classes, (mean[0],), (std[0],))
    return full.take(train_idx), full.take(test_idx)


def _mean_std(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and population std (ddof=0) of each column of `x` (N, F); a constant column gets std 1 (left as is)."""
    mean, std = x.mean(0), x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())
