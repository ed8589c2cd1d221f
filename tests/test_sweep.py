"""`python -m harness.sweep`: grid, random and Optuna search on a fake MNIST; bad input fails first."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, hparams_row, write_fake_mnist

from harness.errors import HarnessError
from harness.workflows.search import OptunaPruning, Range, grid_trials, parse_grid, parse_range, random_trials

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    write_fake_mnist(tmp_path / "data", n_train=200, n_test=40)
    return tmp_path / "data"


def sweep_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [str(REPO / "recipes/mnist_mlp.yaml"), "trainer.epochs=2", "trainer.limit_train_batches=3",
            "data.val_size=50", "data.batch_size=32", "trainer.progress=false", f"data.root={data}",
            f"logging.root={tmp_path / 'runs'}", *extra]


def read_csv(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


def test_grid_runs_every_trial_ranked_by_the_monitor(tmp_path: Path, fake_mnist: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from harness.sweep import main

    grid = ["--grid", "optim.lr=1e-3,3e-2", "--grid", "optim.name=sgd,adam"]
    assert main([*sweep_args(tmp_path, fake_mnist), *grid]) == 0
    out = capsys.readouterr().out
    (sweep_dir,) = (tmp_path / "runs" / "mnist_mlp-sweep").iterdir()
    rows = read_csv(sweep_dir)
    assert len(rows) == 4 and [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert {(float(r["optim.lr"]), r["optim.name"]) for r in rows} == {
        (1e-3, "sgd"), (1e-3, "adam"), (3e-2, "sgd"), (3e-2, "adam")}
    values = [float(r["val/acc"]) for r in rows]
    assert values == sorted(values, reverse=True)  # trainer.mode is max
    for row in rows:
        run_dir = Path(row["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["optim"]["lr"] == float(row["optim.lr"]) and config["optim"]["name"] == row["optim.name"]
        assert summary["best_value"] == pytest.approx(float(row["val/acc"]))
        assert summary["test"] is None and summary["test_covers"] == "not tested"  # no trial tests while choosing
        # Its HParams row: the swept values, and metrics named by the tags of the trial's own scalars, as in
        # train and compare (no test/: trials are not tested).
        hparams, metrics, scalars = hparams_row(run_dir)
        assert hparams == {"optim.lr": float(row["optim.lr"]), "optim.name": row["optim.name"]}
        assert metrics == ["val/loss", "val/acc", "val/f1"] and set(metrics) <= scalars
        assert not any(tag.startswith("hparam") for tag in scalars)
    # Only the chosen trial touches the test split, once, after the search: its best.pt, scored by evaluate.
    chosen = Path(rows[0]["run_dir"])
    (tested,) = [Path(r["run_dir"]) for r in rows if list(Path(r["run_dir"]).glob("eval-*.json"))]
    assert tested == chosen
    report = json.loads((chosen / "eval-best-test.json").read_text())
    assert report["num_samples"] == 40 and float(rows[0]["test/accuracy"]) == report["accuracy"]
    assert all(r["test/accuracy"] == "" for r in rows[1:])
    assert "rank  trial  optim.lr  optim.name  val/acc" in out
    assert f"# test: only trial {rows[0]['trial']}, the chosen one, was scored on the test split" in out


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path, fake_mnist: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from harness.sweep import main

    grid = ["--grid", "optim.lr=1e-3,1e12", "optim.name=sgd", "trainer.log_every_n_steps=1"]
    assert main([*sweep_args(tmp_path, fake_mnist), *grid]) == 0
    (sweep_dir,) = (tmp_path / "runs" / "mnist_mlp-sweep").iterdir()
    rows = read_csv(sweep_dir)
    assert [(r["rank"], float(r["optim.lr"]), r["status"]) for r in rows] == [("1", 1e-3, "done"),
                                                                             ("2", 1e12, "diverged")]
    assert rows[1]["val/acc"] == "" and "non-finite" in capsys.readouterr().err


def test_random_search_draws_within_the_ranges(tmp_path: Path, fake_mnist: Path) -> None:
    from harness.sweep import main

    args = ["--random", "3", "--range", "optim.lr=1e-4:1e-1:log", "--range", "optim.weight_decay=0:1e-3",
            "--grid", "optim.name=sgd,adam", "--seed", "5"]
    assert main([*sweep_args(tmp_path, fake_mnist), *args]) == 0
    (sweep_dir,) = (tmp_path / "runs" / "mnist_mlp-sweep").iterdir()
    rows = sorted(read_csv(sweep_dir), key=lambda r: int(r["trial"]))
    expected = random_trials(3, {"optim.lr": Range(1e-4, 1e-1, log=True), "optim.weight_decay": Range(0, 1e-3)},
                             {"optim.name": ["sgd", "adam"]}, seed=5)
    assert [float(r["optim.lr"]) for r in rows] == [e["optim.lr"] for e in expected]
    assert [r["optim.name"] for r in rows] == [e["optim.name"] for e in expected]


def test_random_draws_are_seeded_uniform_or_log_uniform_and_integer() -> None:
    ranges = {"lr": Range(1e-4, 1e-1, log=True), "wd": Range(0, 1e-3), "width": Range(1, 8),
              "depth": Range(1, 100, log=True)}
    trials = random_trials(3000, ranges, {"opt": ["sgd", "adam"]}, seed=0)
    lr = [t["lr"] for t in trials]
    assert all(1e-4 <= v <= 1e-1 for v in lr)
    decades = [sum(lo <= v < lo * 10 for v in lr) / len(lr) for lo in (1e-4, 1e-3, 1e-2)]
    assert all(abs(d - 1 / 3) < 0.04 for d in decades), decades  # log-uniform: a third per decade
    wd = [t["wd"] for t in trials]
    assert all(0 <= v <= 1e-3 for v in wd) and abs(sum(v < 5e-4 for v in wd) / len(wd) - 0.5) < 0.04
    assert {t["width"] for t in trials} == set(range(1, 9))  # ints, both ends included
    assert all(isinstance(t["depth"], int) and 1 <= t["depth"] <= 100 for t in trials)
    assert {t["opt"] for t in trials} == {"sgd", "adam"}
    assert random_trials(5, ranges, {}, seed=1) == random_trials(5, ranges, {}, seed=1)
    assert random_trials(5, ranges, {}, seed=1) != random_trials(5, ranges, {}, seed=2)


def test_parsing_grids_and_ranges() -> None:
    assert parse_grid("optim.lr=1e-3,3e-3") == ("optim.lr", [1e-3, 3e-3])
    assert parse_grid("optim.name=sgd,adam") == ("optim.name", ["sgd", "adam"])
    assert parse_grid("optim.betas=[0.9,0.99],[0.8,0.9]") == ("optim.betas", [[0.9, 0.99], [0.8, 0.9]])
    assert parse_range("optim.lr=1e-4:1e-1:log") == ("optim.lr", Range(1e-4, 1e-1, log=True))
    assert parse_range("trainer.epochs=1:5")[1].integer
    assert grid_trials({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    for bad in ("optim.lr=1:0", "optim.lr=0:1:log", "optim.lr=a:b", "optim.lr=1e-3", "optim.lr=1:2:lin", "=1:2"):
        with pytest.raises(HarnessError, match="--range"):
            parse_range(bad)


@pytest.mark.parametrize(("extra", "message"), [
    (["--grid", "optim.lrr=1e-3,3e-3"], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["--grid", "optim.lr="], "no values"),
    (["--grid", "optim.lr=1e-3,fast"], "optim.lr"),  # the second trial is bad: found before the first runs
    (["--grid", "optim.name=sgd,adam", "--grid", "optim.name=adamw"], "given twice"),
    (["--random", "2", "--range", "optim.lr=1:0"], "low must be smaller"),
    (["--random", "2", "--range", "optim.lr=0:1e-1:log"], "log range needs low > 0"),
    (["--random", "2", "--range", "optim.lrr=1e-4:1e-1:log"], "unknown key 'optim.lrr'"),
    (["--random", "2", "--range", "optim.lr=-1:1"], "error: --range optim.lr=-1:1: optim.lr: Input should be greater "
                                                    "than 0 (got -1)"),
    (["--optuna", "2", "--range", "optim.lr=0:0.1"], "--range optim.lr=0:0.1: optim.lr: Input should be greater"),
    (["--random", "0", "--range", "optim.lr=1e-4:1e-1"], "at least 1"),
    (["--range", "optim.lr=1e-4:1e-1"], "--range needs --random N or --optuna N"),
    ([], "nothing to sweep"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_trial(tmp_path: Path, fake_mnist: Path, extra: list[str],
                                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.sweep import main

    assert main([*sweep_args(tmp_path, fake_mnist), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()  # no trial ran, no folder


def test_optuna_missing_says_how_to_install(tmp_path: Path, fake_mnist: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from harness.sweep import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    assert main([*sweep_args(tmp_path, fake_mnist), "--optuna", "3", "--range", "optim.lr=1e-4:1e-1:log"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[sweep]'" in err


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna not installed (pip install -e '.[sweep]')")
def test_optuna_runs_trials(tmp_path: Path, fake_mnist: Path) -> None:
    from harness.workflows.search import sweep

    result = sweep(REPO / "recipes/mnist_mlp.yaml", sweep_args(tmp_path, fake_mnist)[1:], optuna=3,
                   ranges={"optim.lr": Range(1e-4, 1e-1, log=True)}, grid={"optim.name": ["sgd", "adam"]}, seed=0)
    trials = result["trials"]
    assert result["method"] == "optuna" and len(trials) == 3
    assert all(1e-4 <= t["values"]["optim.lr"] <= 1e-1 and t["values"]["optim.name"] in ("sgd", "adam")
               for t in trials)
    done = [t["value"] for t in trials if t["status"] == "done"]
    assert done == sorted(done, reverse=True) and trials[0]["status"] == "done"
    assert len(read_csv(Path(result["sweep_dir"]))) == 3


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna not installed (pip install -e '.[sweep]')")
def test_pruning_callback_stops_the_run_when_optuna_prunes() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()

    class FakeTrainer:
        should_stop = False

    trainer = FakeTrainer()
    callback = OptunaPruning(trial, "val/acc")
    callback.on_epoch_end(trainer, 1, {"val/acc": 0.9})  # above the threshold: goes on
    assert not trainer.should_stop and callback.pruned_at is None
    callback.on_epoch_end(trainer, 2, {"val/acc": 0.1})
    assert trainer.should_stop and callback.pruned_at == 2
    assert study.trials[0].intermediate_values == {1: 0.9, 2: 0.1}

    # At the run's last epoch the run has trained to its end: reported, never pruned.
    last = FakeTrainer()
    at_end = OptunaPruning(study.ask(), "val/acc", last_epoch=1)
    at_end.on_epoch_end(last, 1, {"val/acc": 0.1})
    assert not last.should_stop and at_end.pruned_at is None
    assert study.trials[1].intermediate_values == {1: 0.1}


def test_sigint_keeps_the_finished_trials_and_says_how_to_continue(tmp_path: Path, fake_mnist: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal

    from harness.core.callbacks import Callback
    from harness.sweep import main
    from harness.workflows import search

    class CtrlCInTrial2(Callback):
        def on_epoch_start(self, trainer: object, epoch: int) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as from Ctrl-C

    started: list[int] = []

    class Run(search.Run):
        def __init__(self, *args: object, **kwargs: object) -> None:
            started.append(1)
            if len(started) == 2:
                kwargs["callbacks"] = [*kwargs.get("callbacks", []), CtrlCInTrial2()]  # type: ignore[list-item]
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(search, "Run", Run)
    grid = ["--grid", "optim.lr=1e-3,3e-2", "--grid", "optim.name=sgd,adam"]
    assert main([*sweep_args(tmp_path, fake_mnist), *grid]) == 130
    captured = capsys.readouterr()
    (sweep_dir,) = (tmp_path / "runs" / "mnist_mlp-sweep").iterdir()
    (row,) = read_csv(sweep_dir)  # trial 1 finished and is kept; trial 2 was interrupted
    assert row["trial"] == "1" and row["status"] == "done" and float(row["val/acc"]) >= 0
    assert "rank  trial  optim.lr  optim.name  val/acc" in captured.out
    assert ("sweep interrupted after 1 of 4 trials: the 1 finished trials are ranked in "
            f"{sweep_dir / 'sweep.csv'} (no trial was tested); to continue, sweep the 3 trials that did not "
            'finish: optim.lr=0.001 optim.name="adam"; optim.lr=0.03 optim.name="sgd"; '
            'optim.lr=0.03 optim.name="adam"') in captured.err
    assert not list(sweep_dir.glob("trial-*/eval-*.json"))


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna not installed (pip install -e '.[sweep]')")
def test_an_optuna_trial_that_trained_to_the_end_is_done(tmp_path: Path, fake_mnist: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from harness.workflows.search import sweep

    studies = []
    create_study = optuna.create_study

    def study_that_always_prunes(**kwargs: object) -> optuna.Study:
        # A pruner that prunes every trial whenever asked: what MedianPruner does to a below-median trial.
        study = create_study(**{**kwargs, "pruner": optuna.pruners.ThresholdPruner(lower=2.0)})
        studies.append(study)
        return study

    monkeypatch.setattr(optuna, "create_study", study_that_always_prunes)
    args = [a for a in sweep_args(tmp_path, fake_mnist)[1:] if a != "trainer.epochs=2"]
    one = sweep(REPO / "recipes/mnist_mlp.yaml", [*args, "trainer.epochs=1"], optuna=2,
                ranges={"optim.lr": Range(1e-4, 1e-1, log=True)}, seed=0)
    assert [t["status"] for t in one["trials"]] == ["done", "done"]  # one epoch: each trained to its end
    assert [t.state for t in studies[0].trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.value for t in studies[0].trials) == sorted(t["value"] for t in one["trials"])
    assert one["trials"][0]["test"]  # the chosen trial is tested

    two = sweep(REPO / "recipes/mnist_mlp.yaml", [*args, "trainer.epochs=2"], optuna=2,
                ranges={"optim.lr": Range(1e-4, 1e-1, log=True)}, seed=0)
    assert [t["status"] for t in two["trials"]] == ["pruned", "pruned"]  # stopped after epoch 1 of 2
    assert [t.state for t in studies[1].trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(json.loads((Path(t["run_dir"]) / "summary.json").read_text())["epochs_run"] == 1
               for t in two["trials"])
    assert two["tested"] is None and all(not t["test"] for t in two["trials"])


def test_every_trial_of_a_compiled_sweep_is_compiled(tmp_path: Path, fake_mnist: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """10 trials in one process with trainer.compile=true, each a model Dynamo has not seen (its dropout
    rate is a constant of the graph): Dynamo's caches are reset between trials, so none reaches its
    recompile limit (8 graphs per function) and silently runs eagerly. Dynamo's eager backend: the graphs
    are Dynamo's whatever the backend, and Inductor would take minutes here."""
    import torch
    from torch._dynamo.utils import counters

    from harness.sweep import main

    graphs_before_trial: list[int] = []
    real_compile = torch.compile

    def compile_and_count(model, **kwargs):
        graphs_before_trial.append(counters["stats"]["unique_graphs"])
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_and_count)
    rates = ",".join(f"{r / 20:g}" for r in range(10))
    assert main([*sweep_args(tmp_path, fake_mnist, "trainer.compile=true", "trainer.epochs=1",
                             "trainer.limit_train_batches=2", "logging.tensorboard=false"),
                 "--grid", f"model.args.dropout={rates}"]) == 0
    graphs = [*graphs_before_trial, counters["stats"]["unique_graphs"]]
    per_trial = [after - before for before, after in itertools.pairwise(graphs)]
    assert len(per_trial) == 10 and min(per_trial) >= 2, per_trial  # a training and a validation graph, each trial
    assert not any("recompile_limit" in reason for reason in counters["unimplemented"]), counters["unimplemented"]


def text_args(tmp_path: Path, *extra: str) -> list[str]:
    """The shakespeare_char recipe shrunk to a 2-layer GPT on a few KB of words (tests/test_shakespeare_char.py)."""
    from test_shakespeare_char import TINY, text_file

    text_file(tmp_path)
    return [str(REPO / "recipes/shakespeare_char.yaml"), *TINY, "logging.sample=null", "data.path=words.txt",
            f"data.root={tmp_path / 'data'}", f"logging.root={tmp_path / 'runs'}", *extra]


def test_a_text_recipe_is_ranked_by_validation_loss_and_the_chosen_trial_scored_per_token(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.sweep import main

    assert main([*text_args(tmp_path), "--grid", "optim.lr=1e-4,3e-3"]) == 0
    out = capsys.readouterr().out
    (sweep_dir,) = (tmp_path / "runs" / "shakespeare_char-sweep").iterdir()
    rows = read_csv(sweep_dir)
    values = [float(r["val/loss"]) for r in rows]
    assert len(rows) == 2 and values == sorted(values)  # trainer.mode is min
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["best_value"] == pytest.approx(float(row["val/loss"])) and summary["steps_run"] == 6
    report = json.loads((Path(rows[0]["run_dir"]) / "eval-best-test.json").read_text())
    assert report["num_tokens"] == 387  # every character of the validation text but its first
    for name in ("loss", "bits_per_token", "perplexity", "token_accuracy"):
        assert float(rows[0][f"test/{name}"]) == pytest.approx(report[name], rel=1e-6)
        assert rows[1][f"test/{name}"] == ""
    assert "on the whole validation text, 387 tokens; text_chars has no test split" in out
    assert "no other trial saw the test split" not in out


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna not installed (pip install -e '.[sweep]')")
def test_a_step_based_optuna_trial_that_validated_to_its_last_step_is_done(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The pruner may stop a step-based run at any validation but its last: the run's validations, not
    trainer.epochs (which a step-based run does not use), say which one is last."""
    import optuna

    from harness.workflows.search import sweep

    create_study = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: create_study(
        **{**kw, "pruner": optuna.pruners.ThresholdPruner(upper=0.0)}))  # prunes whenever asked
    recipe, *overrides = text_args(tmp_path, "trainer.max_steps=3", "trainer.val_every_n_steps=3")
    result = sweep(recipe, overrides, optuna=1, ranges={"optim.lr": Range(1e-4, 1e-2, log=True)}, seed=0)
    assert [t["status"] for t in result["trials"]] == ["done"] and result["trials"][0]["test"]
