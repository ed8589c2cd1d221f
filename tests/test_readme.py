"""The README's Python examples run as written, so they never drift from the code; every class an
example defines is then exercised on data and checked against numbers computed here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, need_real_data
from torch import nn

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 4, generator=g) + 3.0 * F.one_hot(y, 4).float(), y


def check_dict_batch_trainer(ns: dict[str, Any]) -> None:
    """training_step uses label smoothing 0.1; validation_step the plain loss, with logits and labels."""
    x, y = blobs()
    data = [{"features": xb, "label": yb} for xb, yb in zip(x.split(32), y.split(32), strict=True)]
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    trainer = ns["DictBatchTrainer"](model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=None,
                                     device="cpu", progress=False)
    with torch.no_grad():
        assert float(trainer.training_step(data[0])) == pytest.approx(
            float(F.cross_entropy(model(data[0]["features"]), data[0]["label"], label_smoothing=0.1)))
    history = trainer.fit(data[:6], data[6:], epochs=3)
    with torch.no_grad():
        expected = F.cross_entropy(model(x[192:]), y[192:])
    assert history[-1]["val/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert history[-1]["train/loss"] < history[0]["train/loss"]


def check_regression_trainer(ns: dict[str, Any]) -> None:
    """The example's fit recovers y = x·w + 0.5 to its noise: MSE near 0.1² = 0.01, R² near 1."""
    results = ns["results"]
    assert results["mse"] == pytest.approx(0.01, rel=0.3)
    assert results["r2"] > 0.99
    with torch.no_grad():
        preds = ns["model"](ns["x_val"]).squeeze(-1)
    assert results["mse"] == pytest.approx(float(F.mse_loss(preds, ns["y_val"])), rel=1e-5)


def check_print_best(ns: dict[str, Any]) -> None:
    """PrintBest keeps the best val/acc and hands it over a checkpoint to a resumed run."""
    from harness import Trainer
    from harness.metrics import Accuracy

    x, y = blobs(300)
    train = list(zip(x[:200].split(20), y[:200].split(20), strict=True))
    val = list(zip(x[200:].split(50), y[200:].split(50), strict=True))
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    callback = ns["PrintBest"]()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(),
                      {"acc": Accuracy(num_classes=3)}, device="cpu", progress=False, callbacks=[callback])
    history = trainer.fit(train, val, epochs=3)
    assert callback.best == max(h["val/acc"] for h in history) > 0.5
    trainer.save_checkpoint("resume.pt")
    restored = ns["PrintBest"]()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), device="cpu",
            progress=False, callbacks=[restored]).load_checkpoint("resume.pt")
    assert restored.best == callback.best


def check_blobs(ns: dict[str, Any]) -> None:
    """The import-function example: splits of the promised sizes, classes, and centres (0,0), (2,2), (4,4)."""
    splits = ns["blobs"](None)
    assert (len(splits["train"]), len(splits["test"]), splits["classes"]) == (5000, 2000, ["low", "mid", "high"])
    x, target = splits["train"][0]
    assert x.shape == (2,) and int(target) in (0, 1, 2)
    train = splits["train"]
    for k in range(3):
        centre = train.x[train.targets == k].mean(0)
        torch.testing.assert_close(centre, torch.full((2,), 2.0 * k), atol=0.1, rtol=0)


def check_run_folder_example(ns: dict[str, Any]) -> None:
    """The Python run folder: the files the training command writes (bar config.yaml), the best epoch by
    history.jsonl's val/loss in best.pt, and its test accuracy recounted here from best.pt's weights."""
    import copy
    import json

    from harness.core.checkpoint import read_checkpoint

    run_dir, summary = ns["run_dir"], ns["summary"]
    names = {p.name for p in run_dir.iterdir()}
    assert {"history.jsonl", "summary.json", "checkpoints"} <= names and any(n.startswith("events.") for n in names)
    epochs = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()][:-1]
    best = min(epochs, key=lambda h: h["val/loss"])
    assert (summary["best_epoch"], summary["best_value"]) == (best["epoch"], best["val/loss"])
    assert [h["lr"] for h in epochs[:2]] == [1e-2, 1e-2]  # StepLR: halves only after 20 epochs
    state = read_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert state["epoch"] == best["epoch"]
    model = copy.deepcopy(ns["model"])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in ns["test_data"])
    assert summary["test"]["acc"] == pytest.approx(correct / 1000, abs=1e-9)


def check_accuracy_averages(ns: dict[str, Any]) -> None:
    """harness Accuracy is scikit-learn's accuracy_score; torchmetrics' default is its balanced accuracy."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    target, preds = ns["target"].numpy(), ns["preds"].numpy()
    assert ns["harness_acc"] == pytest.approx(accuracy_score(target, preds))
    assert ns["macro_acc"] == pytest.approx(balanced_accuracy_score(target, preds))


# A block that leaves one of these names behind is checked by the function (besides its own asserts).
VALUE_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "summary": check_run_folder_example,
    "macro_acc": check_accuracy_averages,
}

# Packages of the test extra a block may import: without them the block is skipped, saying which.
OPTIONAL_IMPORTS = ("torchmetrics", "sklearn")

CLASS_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "DictBatchTrainer": check_dict_batch_trainer,
    "RegressionTrainer": check_regression_trainer,
    "PrintBest": check_print_best,
    "Blobs": check_blobs,
}


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    code = BLOCKS[index]
    for package in OPTIONAL_IMPORTS:
        if re.search(rf"^(from|import) {package}\b", code, flags=re.M):
            pytest.importorskip(package, reason=f"README block {index} imports {package}: pip install -e '.[test]'")
    if "load_dataset(" in code:
        monkeypatch.setenv("HARNESS_DATA_DIR", str(need_real_data()))
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"readme_example_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    classes = re.findall(r"^class (\w+)", code, flags=re.M)
    unchecked = [name for name in classes if name not in CLASS_CHECKS]
    assert not unchecked, f"README block {index} defines {unchecked}: add a check that exercises them"
    for name in classes:
        CLASS_CHECKS[name](namespace)
    for name, check in VALUE_CHECKS.items():
        if name in namespace:
            check(namespace)
    if "val/bpc" in code:  # the step-based GPT example: the periodic text is learnt, bits per character fall
        bpc = [entry["val/bpc"] for entry in namespace["history"]]
        assert [entry["step"] for entry in namespace["history"]] == [20, 40]
        assert bpc[1] < bpc[0] < 3.17  # log2(9): a uniform guess among the 9 characters
    if "scores" in namespace:  # the full Python example: 3 epochs of the seeded MLP on real MNIST
        assert namespace["scores"]["acc"] > 0.96
        assert len(namespace["history"]) == 3
        assert (tmp_path / "runs" / "my-exp" / "history.jsonl").is_file()
