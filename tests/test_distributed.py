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

import numpy as np
import pytest
import torch
from conftest import REPO, write_fake_mnist, write_idx
from hang_guard import HANG_GUARD_S, communicate_guarded, kill_group, run_guarded

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
    # a session of its own: a test that gives up on it kills the ranks too (hang_guard.kill_group)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_two_ranks_write_one_run_and_count_validation_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_mnist(data, n_train=700, n_test=101)
    # One training batch per rank and epoch, no dropout: epoch 1's train/loss is the seeded initial
    # model's loss on the two ranks' first batches, which one process can compute exactly.
    overrides = ["trainer.epochs=2", "trainer.limit_train_batches=1", "model.args.dropout=0", "data.val_size=201",
                 "data.batch_size=32", "data.eval_batch_size=50", "metrics.cm.type=confusion_matrix",
                 "trainer.progress=false", f"logging.root={tmp_path / 'runs'}"]
    proc = torchrun(2, "recipes/mnist_mlp.yaml", *overrides, data_root=data)
    out, err = communicate_guarded(proc)
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
        deadline = time.monotonic() + HANG_GUARD_S
        while not list((tmp_path / "runs").glob("*/*/checkpoints/last.pt")):  # wait for epoch 1's checkpoint
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, f"no checkpoint after {HANG_GUARD_S} s"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # the rank that is not rank 0 (started second)
        _, err = proc.communicate(timeout=240)  # below the 300 s collective timeout: the job did not wait on it
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL)" in err or "SIGKILL" in err, err[-2000:]
    last = next((tmp_path / "runs").glob("*/*/checkpoints/last.pt"))
    assert read_checkpoint(last)["epoch"] >= 1  # still loadable


def test_distributed_evaluate_equals_single_process(tmp_path: Path) -> None:
    """`torchrun -m harness.evaluate`: each rank scores its shard of the 101-image test split (odd)."""
    from harness.workflows.evaluation import evaluate

    data = tmp_path / "data"
    arrays = write_fake_mnist(data, n_train=300, n_test=101)
    env = {**os.environ, "HARNESS_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    common = ["data.val_size=50", "data.eval_batch_size=20", "trainer.progress=false"]
    subprocess.run([sys.executable, "-m", "harness.train", "recipes/mnist_mlp.yaml", "trainer.epochs=1", *common,
                    f"logging.root={tmp_path / 'runs'}"], cwd=REPO, env=env, check=True, capture_output=True)
    best = next((tmp_path / "runs").glob("*/*/checkpoints/best.pt"))
    cmd = [*TORCHRUN, "--nproc_per_node=2", "-m", "harness.evaluate", "recipes/mnist_mlp.yaml",
           "--checkpoint", str(best), *common]
    ranked = run_guarded(cmd, cwd=REPO, env=env)
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    assert ranked.stdout.count("confusion matrix") == 1  # rank 0 alone reports
    written = json.loads(next(best.parent.parent.glob("eval-best-test.json")).read_text())

    csv_path = best.parent.parent / "predictions-best-test.csv"
    ranked_rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]

    recipe = load_recipe(REPO / "recipes/mnist_mlp.yaml", [*common, f"data.root={data}"])
    single = evaluate(recipe, best, "test", verbose=False)  # writes the same files, from one process
    single_rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    # The ranks' kept predictions, gathered, come back in the order of the split: row i is sample i.
    assert [int(row[0]) for row in ranked_rows] == list(range(101))
    assert [int(row[1]) for row in ranked_rows] == arrays[False][1].tolist()
    assert [row[:5] for row in ranked_rows] == [row[:5] for row in single_rows]  # index, target, prediction
    assert [float(row[5]) for row in ranked_rows] == pytest.approx([float(row[5]) for row in single_rows], rel=1e-5)
    assert written["confused_pairs"] == single["confused_pairs"]
    def mistakes(report):  # the most confident mistakes of all ranks: the same samples as in one process
        return sorted((m["index"], m["target"], m["predicted"]) for m in report["mistakes"]["shown"])

    assert len(written["mistakes"]["shown"]) == 16 and mistakes(written) == mistakes(single)
    assert written["auroc"] == pytest.approx(single["auroc"], rel=1e-6)
    assert written["confusion_matrix"] == single["confusion_matrix"]
    assert sum(map(sum, written["confusion_matrix"])) == 101
    assert written["accuracy"] == single["accuracy"]
    assert written["loss"] == pytest.approx(single["loss"], rel=1e-6)


# ---------------------------------------------------------------- what two ranks compute (tests/rank_scenarios.py)
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One torchrun job of 2 CPU ranks runs every scenario of tests/rank_scenarios.py; each rank's results."""
    out = tmp_path_factory.mktemp("two_ranks")
    data = out / "data"
    write_fake_mnist(data, n_train=178, n_test=40)  # 178 - 50 held out = 128: 4 batches of 16 per rank
    # Images of uneven brightness (a scale drawn per image): batches differ in their BatchNorm statistics,
    # as real batches do, far more than batches of uniform noise.
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 178), ("t10k", 40)):
        images = rng.integers(0, 256, (n, 28, 28)) * rng.uniform(0, 1, (n, 1, 1))
        write_idx(data / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images.astype(np.uint8))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, "--nproc_per_node=2", str(REPO / "tests" / "rank_scenarios.py"), str(out), str(data)]
    done = run_guarded(cmd, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return {"out": out, "data": data, "ranks": ranks}


def test_validation_under_ddp_equals_one_process_scoring_the_checkpoint(two_ranks: dict) -> None:
    """A CNN with BatchNorm (and EMA): every rank validates rank 0's running statistics, so the 2-rank
    validation figures are those of the saved checkpoint, scored by one process."""
    from harness.workflows.evaluation import evaluate

    run = two_ranks["out"] / "runs" / "straight"
    final = two_ranks["ranks"][0]["runs"]["straight_final"]
    recipe = load_recipe(run / "config.yaml", [f"data.root={two_ranks['data']}"])
    single = evaluate(recipe, run / "checkpoints" / "last.pt", "val", write=False, verbose=False)
    assert final["val/cm"] == single["confusion_matrix"]
    assert sum(map(sum, final["val/cm"])) == 50
    assert final["val/loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_a_resume_under_torchrun_is_bit_identical_with_dropout(two_ranks: dict) -> None:
    """2 epochs straight vs 1 epoch + resume + 1 epoch, dropout 0.5: rank 1 resumes its own RNG stream."""
    runs = two_ranks["out"] / "runs"
    assert two_ranks["ranks"][0]["runs"]["resumed_epochs"] == 2
    # Resuming the finished run again: both ranks return the run's summary (rank 1 does not train alone).
    again = [r["runs"]["finished_again"] for r in two_ranks["ranks"]]
    assert again[0] == again[1] and again[0]["epochs_run"] == 2 and again[0]["final"]["val/cm"]
    straight = read_checkpoint(runs / "straight" / "checkpoints" / "last.pt")
    resumed = read_checkpoint(runs / "split" / "checkpoints" / "last.pt")
    assert len(straight["rng_per_rank"]) == 2
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    shadow = next(iter(straight["callbacks"].values()))["shadow"]
    resumed_shadow = next(iter(resumed["callbacks"].values()))["shadow"]
    assert all(torch.equal(v, resumed_shadow[k]) for k, v in shadow.items())


def test_ranks_draw_their_own_random_streams_the_same_on_every_run(two_ranks: dict) -> None:
    (first0, again0), (first1, again1) = (r["rank_streams"] for r in two_ranks["ranks"])
    assert first0 == again0 and first1 == again1  # seeded: repeatable
    assert first0 != first1  # distinct: the ranks' dropout masks differ


def test_a_nan_on_one_rank_is_skipped_by_every_rank(two_ranks: dict) -> None:
    rank0, rank1 = (r["nan_skips"] for r in two_ranks["ranks"])
    # NaN loss on rank 1 at steps 2 and 5: both ranks skip both steps, and stay identical and finite.
    assert rank0["isolated"]["steps"] == rank1["isolated"]["steps"] == 6
    assert not rank0["isolated"]["halted"] and not rank1["isolated"]["halted"]
    for mine, theirs in zip(rank0["isolated"]["params"], rank1["isolated"]["params"], strict=True):
        assert torch.isfinite(mine).all() and torch.equal(mine, theirs)
    # NaN on rank 1 from batch 3 on: three skips in a row (batches 3-5) halt both ranks after the same batch.
    assert rank0["halt"]["halted"] and rank1["halt"]["halted"]
    assert rank0["halt"]["batches"] == rank1["halt"]["batches"] == 5
    assert rank0["halt"]["steps"] == rank1["halt"]["steps"] == 2
    for mine, theirs in zip(rank0["halt"]["params"], rank1["halt"]["params"], strict=True):
        assert torch.isfinite(mine).all() and torch.equal(mine, theirs)


def test_accumulation_under_ddp_all_reduces_once_a_step_and_equals_one_big_batch(two_ranks: dict) -> None:
    for rank in two_ranks["ranks"]:
        accumulated, one_batch = rank["accumulation"]["accumulated"], rank["accumulation"]["one_batch"]
        assert accumulated["steps"] == one_batch["steps"] == 2
        assert accumulated["all_reduces"] == one_batch["all_reduces"] == 2  # not one per batch (4)
        for a, b in zip(accumulated["params"], one_batch["params"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ranks_with_different_padding_train_on_the_mean_over_every_token(two_ranks: dict) -> None:
    """Each step: 2 micro-batches on each of 2 ranks, with other numbers of real tokens in each. The update
    is one process's SGD step on the summed token losses of all four divided by their tokens, under DDP and
    FSDP alike, and train/loss is the token-weighted mean."""
    import torch.nn.functional as F
    from rank_scenarios import PAD, VOCAB, token_batches, token_gpt

    model = token_gpt()
    batches = [token_batches(0), token_batches(1)]
    nll_total, tokens_total = 0.0, 0
    for step in (0, 1):
        group = [b for rank in batches for b in rank[2 * step: 2 * step + 2]]
        sums = [F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=PAD, reduction="sum")
                for x, y in group]
        tokens = sum(int((y != PAD).sum()) for _, y in group)
        nll_total, tokens_total = nll_total + float(sum(sums).detach()), tokens_total + tokens
        (sum(sums) / tokens).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
                p.grad = None
    expected = [p.detach() for p in model.parameters()]
    for rank in two_ranks["ranks"]:
        for strategy in ("ddp", "fsdp"):
            got = rank["token_padding"][strategy]
            assert got["steps"] == 2
            for a, b in zip(got["params"], expected, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert got["train_loss"] == pytest.approx(nll_total / tokens_total, rel=1e-6)


def test_every_tensor_given_to_a_collective_is_on_the_trainers_device(two_ranks: dict) -> None:
    for rank in two_ranks["ranks"]:
        devices = rank["collective_devices"]
        assert any(d.startswith("broadcast ") for d in devices) and any(d.startswith("all_reduce ") for d in devices)
        assert all(d.endswith(" cpu") for d in devices), devices


def test_validation_under_ddp_is_compiled(two_ranks: dict) -> None:
    for rank in two_ranks["ranks"]:
        compiled = rank["compiled_validation"]
        assert compiled["eval_model"] == "OptimizedModule" and compiled["eval_wraps_bare_module"]
        assert compiled["graphs_compiled_by_validation"] >= 1


def test_scoring_fewer_samples_than_ranks_gathers_the_kept_predictions(two_ranks: dict) -> None:
    """One test image, two ranks: rank 1 scores nothing, yet both ranks get rank 0's row (no hang, no
    0-column gather) and the image among the mistakes, whose probabilities one process also gives."""
    idle = [r["scoring_with_an_idle_rank"] for r in two_ranks["ranks"]]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    probs = torch.softmax(model(torch.rand(1, 1, 4, 4)).double(), dim=1)
    for kept in idle:
        assert kept["index"] == [0] and kept["input_shape"] == [1, 4, 4]
        assert torch.allclose(kept["probs"], probs, rtol=1e-6)
        assert kept["mistakes"] == ([0] if probs.argmax() != 2 else [])
    assert idle[0]["loss"] == idle[1]["loss"]


def test_window_losses_under_two_ranks_come_back_in_window_order(two_ranks: dict) -> None:
    """compare's per-window losses of a language model: 2 ranks each score every other window; gathered, they
    are one process's, window for window (the last window's padding left out), and sum to the pass's loss."""
    from rank_scenarios import VOCAB, token_gpt

    from harness.core.window_losses import WindowLossRecorder
    from harness.data.text_chars import SequentialWindows
    from harness.metrics import TokenCrossEntropyLoss

    ids = torch.randint(0, VOCAB, (197,), generator=torch.Generator().manual_seed(5))
    single = WindowLossRecorder(token_gpt(), None, TokenCrossEntropyLoss(), device="cpu",
                                progress=False, loggers=[])
    loss = single.validate(SequentialWindows(ids, 8, 4), prefix="test")["test/loss"]
    nll, tokens = single.window_losses()
    assert sorted(tokens.tolist()) == [4] + [8] * 24  # 196 characters predicted: 24 windows of 8, the last of 4
    for rank in two_ranks["ranks"]:
        ranked = rank["window_losses"]
        assert ranked["tokens"].tolist() == tokens.tolist()
        assert torch.allclose(ranked["nll"], nll, rtol=1e-6)
        assert ranked["loss"] == pytest.approx(loss, rel=1e-6)
        assert float(ranked["nll"].sum() / ranked["tokens"].sum()) == pytest.approx(loss, rel=1e-6)


def test_cuda_with_an_index_under_torchrun_is_one_line_before_anything_starts(monkeypatch) -> None:
    """Every rank would take GPU N (NCCL: "Duplicate GPU detected"); torchrun's LOCAL_RANK picks the GPU."""
    from harness.core.distributed import process_group_is_up
    from harness.errors import HarnessError
    from harness.recipe.parts import setup

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe(REPO / "recipes/mnist.yaml", ["trainer.device=cuda:1"])
    with pytest.raises(HarnessError, match=r"^trainer.device=cuda:1: under torchrun each rank uses the GPU of its "
                                           r"LOCAL_RANK; use trainer.device=cuda"):
        setup(recipe)
    assert not process_group_is_up()


def test_sync_batchnorm_keeps_the_parameters_the_optimizer_holds_and_needs_cuda() -> None:
    from harness.core.distributed import convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    params, buffers = list(model.parameters()), list(model.buffers())
    converted = convert_sync_batchnorm(model, torch.device("cuda", 0))
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert all(a is b for a, b in zip(converted.parameters(), params, strict=True))
    assert all(a is b for a, b in zip(converted.buffers(), buffers, strict=True))
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA ranks"):
        convert_sync_batchnorm(model, torch.device("cpu"))
