"""torchrun on CPU (Gloo, 127.0.0.1): two ranks train one run, and their training loss and validation
counts equal a single process's; a rank killed mid-run ends the job with an error, not a hang.

torchrun runs with `--standalone`: its rendezvous store binds a free port itself, so no port is
picked here, released, and raced for by another process before torchrun binds it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_fake_mnist

from harness.core.checkpoint import read_checkpoint
from harness.core.seed import seed_everything
from harness.core.trainer import Trainer
from harness.recipe.build import build_metrics, build_model
from harness.recipe.data import build_data
from harness.recipe.schema import load_recipe

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def torchrun(nproc: int, *args: str, data_root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_root), "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, f"--nproc_per_node={nproc}", "-m", "harness.train", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_ranks_write_one_run_and_count_validation_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_mnist(data, n_train=700, n_test=101)
    # One training batch per rank and epoch, no dropout: epoch 1's train/loss is the seeded initial
    # model's loss on the two ranks' first batches, which one process can compute exactly.
    overrides = ["trainer.epochs=2", "trainer.limit_train_batches=1", "model.args.dropout=0", "data.val_size=201",
                 "data.batch_size=32", "data.eval_batch_size=50", "metrics.cm.type=confusion_matrix",
                 "trainer.progress=false", f"logging.root={tmp_path / 'runs'}"]
    proc = torchrun(2, "recipes/mnist_mlp.yaml", *overrides, data_root=data)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("test: loss") == 1  # rank 0 alone reports

    runs = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h.get("epoch") for h in history] == [1, 2, None]
    summary = json.loads((run / "summary.json").read_text())

    # The same checkpoint, validated by one process on the same 201-sample split (odd: uneven shards).
    recipe = load_recipe(REPO / "recipes/mnist_mlp.yaml", [*overrides, f"data.root={data}"])
    state = read_checkpoint(run / "checkpoints" / "last.pt")
    model = build_model(recipe.model)
    model.load_state_dict(state["model"])
    single = build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(),
                      build_metrics(recipe.metrics, single.num_classes), device="cpu", progress=False)
    scores = trainer.validate(single.val)
    ranked = summary["final"]
    assert ranked["val/cm"] == scores["val/cm"]  # every count identical: nothing missed, nothing twice
    assert sum(map(sum, ranked["val/cm"])) == 201
    assert ranked["val/acc"] == scores["val/acc"]
    assert ranked["val/loss"] == pytest.approx(scores["val/loss"], rel=1e-6)

    # train/loss averages both ranks' samples, not rank 0's shard alone.
    seed_everything(recipe.trainer.seed)  # as every rank does before building the model
    initial = build_model(recipe.model)
    sums, counts = [], []
    for rank in (0, 1):
        shard = build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed, rank=rank, world_size=2).train
        shard.set_epoch(0)
        images, target = next(iter(shard))
        with torch.no_grad():
            sums.append(float(torch.nn.functional.cross_entropy(initial(images), target)) * len(target))
        counts.append(len(target))
    assert counts == [32, 32]
    shard_losses = [total / n for total, n in zip(sums, counts, strict=True)]
    assert abs(shard_losses[0] - shard_losses[1]) > 1e-3 * shard_losses[0]  # one shard's mean would not pass
    assert history[0]["train/loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-6)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_killing_one_rank_ends_the_job_with_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_mnist(data, n_train=4000, n_test=100)
    proc = torchrun(2, "recipes/mnist_mlp.yaml", "trainer.epochs=200", "data.val_size=100", "data.batch_size=16",
                    "trainer.progress=false", f"logging.root={tmp_path / 'runs'}", data_root=data)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs").glob("*/*/checkpoints/last.pt")):  # wait for epoch 1's checkpoint
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # the rank that is not rank 0 (started second)
        _, err = proc.communicate(timeout=120)  # far below the 300 s collective timeout
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL)" in err or "SIGKILL" in err, err[-2000:]
    last = next((tmp_path / "runs").glob("*/*/checkpoints/last.pt"))
    assert read_checkpoint(last)["epoch"] >= 1  # still loadable


def test_distributed_evaluate_equals_single_process(tmp_path: Path) -> None:
    """`torchrun -m harness.evaluate`: each rank scores its shard of the 101-image test split (odd)."""
    from harness.workflows.evaluation import evaluate

    data = tmp_path / "data"
    write_fake_mnist(data, n_train=300, n_test=101)
    env = {**os.environ, "HARNESS_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    common = ["data.val_size=50", "data.eval_batch_size=20", "trainer.progress=false"]
    subprocess.run([sys.executable, "-m", "harness.train", "recipes/mnist_mlp.yaml", "trainer.epochs=1", *common,
                    f"logging.root={tmp_path / 'runs'}"], cwd=REPO, env=env, check=True, capture_output=True)
    best = next((tmp_path / "runs").glob("*/*/checkpoints/best.pt"))
    cmd = [*TORCHRUN, "--nproc_per_node=2", "-m", "harness.evaluate", "recipes/mnist_mlp.yaml",
           "--checkpoint", str(best), *common]
    ranked = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    assert ranked.stdout.count("confusion matrix") == 1  # rank 0 alone reports
    written = json.loads(next(best.parent.parent.glob("eval-best-test.json")).read_text())

    recipe = load_recipe(REPO / "recipes/mnist_mlp.yaml", [*common, f"data.root={data}"])
    single = evaluate(recipe, best, "test", write=False, verbose=False)
    assert written["confusion_matrix"] == single["confusion_matrix"]
    assert sum(map(sum, written["confusion_matrix"])) == 101
    assert written["accuracy"] == single["accuracy"]
    assert written["loss"] == pytest.approx(single["loss"], rel=1e-6)
