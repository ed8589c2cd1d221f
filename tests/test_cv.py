"""Stratified folds (`harness.folds`) and `python -m harness.cv` end to end on a fake MNIST."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import scipy.stats
import torch
from conftest import REPO, write_fake_mnist

from harness.data.folds import fold_splits, stratified_folds
from harness.errors import HarnessError

UNEVEN = torch.tensor([0] * 7 + [1] * 3 + [2] * 12 + [3] * 5 + [5] * 4)  # class 4 absent, 31 samples


def labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    """Shuffled labels with `counts[c]` samples of class c."""
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize(("targets", "k"), [
    (labels([10] * 10), 5),  # balanced: exactly 2 per class per fold
    (labels([10] * 10), 3),  # 10 = 3 + 3 + 4
    (UNEVEN, 3),
    (labels([101, 57, 3, 990, 14]), 3),
])
def test_folds_are_disjoint_cover_and_keep_class_ratios(targets: torch.Tensor, k: int) -> None:
    folds = stratified_folds(targets, k, seed=0)
    assert len(folds) == k
    every = torch.cat(folds)
    assert sorted(every.tolist()) == list(range(len(targets)))  # disjoint and covering
    assert all(torch.equal(f, f.sort().values) for f in folds)
    counts = torch.bincount(targets)
    for fold in folds:
        in_fold = torch.bincount(targets[fold], minlength=len(counts))
        # each class: floor(n_c / k) or ceil(n_c / k) samples in every fold
        assert torch.all(in_fold >= counts // k) and torch.all(in_fold <= -(-counts // k)), (in_fold, counts)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_fold_splits_train_on_the_other_folds() -> None:
    folds = stratified_folds(UNEVEN, 3, seed=1)
    for (train_idx, val_idx), fold in zip(fold_splits(folds), folds, strict=True):
        assert torch.equal(val_idx, fold)
        assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
        assert len(train_idx) + len(val_idx) == len(UNEVEN)


def test_folds_are_seeded() -> None:
    targets = labels([20] * 10)
    same = [stratified_folds(targets, 4, seed=7) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*same, strict=True))
    other = stratified_folds(targets, 4, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(same[0], other, strict=True))


@pytest.mark.parametrize(("k", "message"), [(1, "at least 2"), (0, "at least 2"), (4, "smallest class")])
def test_bad_fold_counts(k: int, message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        stratified_folds(UNEVEN, k)  # the smallest class has 3 samples


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    write_fake_mnist(tmp_path / "data", n_train=200, n_test=20)
    return tmp_path / "data"


def cv_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [str(REPO / "recipes/mnist_mlp.yaml"), "trainer.epochs=2", "trainer.progress=false",
            "data.batch_size=32", f"data.root={data}", f"logging.root={tmp_path / 'runs'}", *extra]


def test_cv_end_to_end(tmp_path: Path, fake_mnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.cv import main

    assert main([*cv_args(tmp_path, fake_mnist), "--folds", "4"]) == 0
    out = capsys.readouterr().out
    (cv_dir,) = (tmp_path / "runs" / "mnist_mlp-cv").iterdir()
    result = json.loads((cv_dir / "cv.json").read_text())
    assert result["folds"] == 4 and len(result["per_fold"]) == 4 and result["std_of"] == "sample (ddof=1)"
    assert [f["val_size"] for f in result["per_fold"]] == [50] * 4  # 200 samples, 20 per class
    assert all(f["train_size"] == 150 and f["epochs_run"] == 2 for f in result["per_fold"])
    for name in ("val/loss", "val/acc", "val/f1"):
        values = [f["metrics"][name] for f in result["per_fold"]]
        assert result["mean"][name] == pytest.approx(statistics.fmean(values))
        assert result["std"][name] == pytest.approx(statistics.stdev(values))
        assert f"{result['mean'][name]:.4f} ± {result['std'][name]:.4f}" in out
        # the 95 % t-interval of the mean over the 4 folds: scipy's, printed beside mean ± std
        expected = scipy.stats.t.interval(0.95, 3, loc=statistics.fmean(values), scale=scipy.stats.sem(values))
        assert result["t_interval"][name] == pytest.approx(expected, rel=1e-9)
        (line,) = [line for line in out.splitlines() if line.startswith(f"{name} ")]
        assert line.split()[-3:] == [f"{result['std'][name]:.4f}", f"[{expected[0]:.4f},", f"{expected[1]:.4f}]"]
    for f in result["per_fold"]:  # one TensorBoard run per fold, side by side; no checkpoints
        fold_dir = cv_dir / f"fold-{f['fold']}"
        events = EventAccumulator(str(fold_dir))
        events.Reload()
        curve = events.Scalars("val/acc")
        assert [e.step for e in curve] == [1, 2]
        assert curve[-1].value == pytest.approx(f["metrics"]["val/acc"])
        assert not (fold_dir / "checkpoints").exists()
    assert (cv_dir / "config.yaml").is_file()
    assert "folds are not independent" in out and "optimistic" in out and "optimistic" in result["interval_of"]


@pytest.mark.parametrize("folds", ["1", "0", "21"])  # 21 > the 20 samples per class
def test_cv_bad_folds_one_line_exit_2(tmp_path: Path, fake_mnist: Path, folds: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cv import main

    assert main([*cv_args(tmp_path, fake_mnist), "--folds", folds]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "folds" in err, err
    assert not (tmp_path / "runs").exists()  # nothing trained, no folder


def test_cv_folds_the_same_samples_build_data_trains_on(tmp_path: Path, fake_mnist: Path) -> None:
    """With data.classes the folds index the class subset (60 of the 200 images), not the full set."""
    from harness.cv import main

    args = cv_args(tmp_path, fake_mnist, "trainer.epochs=1", "data.classes=[0,1,2]", "model.args.num_classes=3")
    assert main([*args, "--folds", "3"]) == 0
    (cv_dir,) = (tmp_path / "runs" / "mnist_mlp-cv").iterdir()
    result = json.loads((cv_dir / "cv.json").read_text())
    assert [f["val_size"] for f in result["per_fold"]] == [20] * 3
    assert all(f["train_size"] == 40 for f in result["per_fold"])


def test_cv_ignores_val_size_zero(tmp_path: Path, fake_mnist: Path) -> None:
    """The held-out fold is the validation data: data.val_size=0 used to be refused ("'val/acc' is never logged")."""
    from harness.cv import main

    assert main([*cv_args(tmp_path, fake_mnist, "trainer.epochs=1", "data.val_size=0"), "--folds", "2"]) == 0
    (cv_dir,) = (tmp_path / "runs" / "mnist_mlp-cv").iterdir()
    result = json.loads((cv_dir / "cv.json").read_text())
    assert [f["val_size"] for f in result["per_fold"]] == [100, 100]
    assert all(0 <= f["metrics"]["val/acc"] <= 1 for f in result["per_fold"])


def test_cv_reports_the_train_size_each_fold_trained_on(tmp_path: Path, fake_mnist: Path) -> None:
    """cv.json said 150 (the other folds) when data.train_size=60 trained each fold on 60 samples."""
    from harness.cv import main
    from harness.recipe.data import build_data
    from harness.recipe.schema import load_recipe

    args = cv_args(tmp_path, fake_mnist, "trainer.epochs=1", "data.train_size=60")
    assert main([*args, "--folds", "4"]) == 0
    (cv_dir,) = (tmp_path / "runs" / "mnist_mlp-cv").iterdir()
    per_fold = json.loads((cv_dir / "cv.json").read_text())["per_fold"]
    assert [(f["train_size"], f["other_folds_size"], f["val_size"]) for f in per_fold] == [(60, 150, 50)] * 4
    # what build_data trains a fold on, given the fold's indices: 60 images
    recipe = load_recipe(args[0], args[1:])
    data = build_data(recipe.data, torch.device("cpu"), 0, indices=(torch.arange(150), torch.arange(150, 200)))
    assert sum(len(y) for _, y in data.train) == 60


def test_cv_train_size_larger_than_a_fold_fails_before_the_folder(tmp_path: Path, fake_mnist: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cv import main

    assert main([*cv_args(tmp_path, fake_mnist, "data.train_size=151"), "--folds", "4"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: data.train_size=151: with --folds 4, a fold trains on the other 3 folds, as few as 150 "
                   "of the 200 training samples; set data.train_size to at most 150, or null to train on all of them\n")
    assert not (tmp_path / "runs").exists()



def test_cv_refuses_bad_model_args_before_reading_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An image recipe's model is built before the data is read (only a text model waits for its fold's
    vocabulary): bad model.args are the one line, not the data folder that does not exist."""
    from harness.cv import main

    assert main([str(REPO / "recipes/mnist_mlp.yaml"), f"data.root={tmp_path / 'nowhere'}", "data.download=false",
                 "model.args.no_such_arg=1", f"logging.root={tmp_path / 'runs'}", "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.args for mlp") and err.count("\n") == 1 and "no_such_arg" in err, err

def test_cv_interrupted_writes_the_finished_folds_and_says_how_to_finish(tmp_path: Path, fake_mnist: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from odd_models import InterruptAtCall

    from harness.cv import main

    def run(at: int, root: Path, argv: list[str] | None = None) -> int:
        InterruptAtCall.calls = 0 if argv is None else at  # a resume is not interrupted again: past `at` already
        model = ["model.name=odd_models:InterruptAtCall", f"model.args={{at: {at}}}"]
        return main(argv or [*cv_args(root, fake_mnist, *model), "--folds", "3"])

    # An uninterrupted run first: how many forward calls one fold makes, and the figures to match.
    assert run(10**9, tmp_path / "whole") == 0
    per_fold_calls = InterruptAtCall.calls // 3
    (whole_dir,) = (tmp_path / "whole" / "runs" / "mnist_mlp-cv").iterdir()
    whole = json.loads((whole_dir / "cv.json").read_text())
    capsys.readouterr()

    # SIGINT a few steps into fold 2: exit 130, fold 1 kept in cv.json, marked incomplete.
    assert run(per_fold_calls + 3, tmp_path) == 130
    err = capsys.readouterr().err
    (cv_dir,) = (tmp_path / "runs" / "mnist_mlp-cv").iterdir()
    partial = json.loads((cv_dir / "cv.json").read_text())
    assert partial["complete"] is False and partial["interrupted"] == {"signal": "SIGINT", "fold": 2}
    assert [f["fold"] for f in partial["per_fold"]] == [1] and "mean" not in partial
    assert partial["per_fold"][0]["metrics"] == whole["per_fold"][0]["metrics"]
    command = err.strip().splitlines()[-1].split("; to run the others, ")[1]
    assert command == f"python -m harness.cv {cv_dir / 'config.yaml'} --folds 3 --resume {cv_dir}"

    # The printed command finishes the run in the same folder: the same figures as the uninterrupted run.
    assert run(per_fold_calls + 3, tmp_path, shlex.split(command)[3:]) == 0
    finished = json.loads((cv_dir / "cv.json").read_text())
    assert finished["complete"] is True and [f["fold"] for f in finished["per_fold"]] == [1, 2, 3]
    for got, expected in zip(finished["per_fold"], whole["per_fold"], strict=True):
        assert got["metrics"] == pytest.approx(expected["metrics"], rel=1e-6)
    assert finished["mean"]["val/acc"] == pytest.approx(whole["mean"]["val/acc"], rel=1e-6)
    history = [json.loads(line) for line in (cv_dir / "fold-2" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # the interrupted fold's partial logs were replaced
    # A complete run is not resumed again.
    assert run(10**9, tmp_path, shlex.split(command)[3:]) == 2
    assert "that cross-validation is complete" in capsys.readouterr().err
