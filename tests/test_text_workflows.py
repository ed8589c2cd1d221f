"""The commands on sentence recipes (`recipes/mr_cnn.yaml`, `recipes/mr_transformer.yaml`) with generated
MR-like files: train, evaluate, compare, export (token ids of any length), compress, and a checkpoint that
meets another vocabulary."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_fake_mr

from harness.core.checkpoint import read_checkpoint
from harness.recipe.build import build_model
from harness.recipe.data import build_data
from harness.recipe.schema import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CNN, TRANSFORMER = REPO / "recipes/mr_cnn.yaml", REPO / "recipes/mr_transformer.yaml"
SMALL = {CNN: "model.args={num_classes: 2, embed_dim: 16, maps: 8}",
         TRANSFORMER: "model.args={num_classes: 2, dim: 16, heads: 2, layers: 1, mlp_dim: 32}"}


def overrides(tmp_path: Path, recipe: Path) -> list[str]:
    return [f"data.root={tmp_path / 'data'}", f"logging.root={tmp_path / 'runs'}", "trainer.progress=false",
            "trainer.epochs=5", "data.val_size=20", "data.batch_size=16", "logging.tensorboard=false", "optim.lr=0.01",
            SMALL[recipe]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small CNN trained on generated MR-like files (80 sentences a class)."""
    from harness.train import main

    tmp = tmp_path_factory.mktemp("text")
    write_fake_mr(tmp / "data", n_per_class=80)
    args = overrides(tmp, CNN)
    assert main([str(CNN), *args]) == 0
    (run_dir,) = (tmp / "runs" / "mr_cnn").iterdir()
    return {"tmp": tmp, "args": args, "run_dir": run_dir, "best": run_dir / "checkpoints" / "best.pt",
            "summary": json.loads((run_dir / "summary.json").read_text())}


def test_train_learns_the_cue_words_and_keeps_the_vocabulary_in_the_checkpoint(trained: dict) -> None:
    recipe = load_recipe(CNN, trained["args"])
    data = build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed)
    state = read_checkpoint(trained["best"])
    assert state["extra"]["vocabulary"] == data.vocabulary and data.vocabulary[:2] == ["<pad>", "<unk>"]
    assert state["model"]["embedding.weight"].shape == (len(data.vocabulary), 16)  # sized from the vocabulary
    assert trained["summary"]["test"]["acc"] >= 0.75  # the cue words decide the class; chance is 0.5


def test_evaluate_scores_the_test_sentences(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.evaluate import main

    assert main([str(CNN), "--checkpoint", str(trained["best"]), *trained["args"]]) == 0
    report = json.loads((trained["run_dir"] / "eval-best-test.json").read_text())
    assert report["num_samples"] == 16 and report["classes"] == ["neg", "pos"]  # 1 of 10 folds of 160
    assert report["accuracy"] == pytest.approx(trained["summary"]["test"]["acc"])


def test_evaluate_gives_a_classifier_s_full_report_on_sentences(trained: dict) -> None:
    """The report of a classifier, checked against each test sentence scored alone (no padding at all) and
    against scikit-learn / torchmetrics: intervals, calibration, AUROC, the predictions CSV; no grid of
    confident mistakes (the inputs are token ids, not pictures), and the report says why."""
    import csv

    import sklearn.metrics as skm
    from torchmetrics.classification import MulticlassCalibrationError

    from harness.workflows.evaluation import evaluate

    recipe = load_recipe(CNN, trained["args"])
    report = evaluate(recipe, trained["best"], "test", write=True, verbose=False)
    one_by_one = build_data(recipe.data.model_copy(update={"eval_batch_size": 1}), torch.device("cpu"),
                            recipe.trainer.seed)
    state = read_checkpoint(trained["best"])
    model = build_model(recipe.model, vocab_size=len(state["extra"]["vocabulary"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        probs = torch.cat([model.eval()(tokens).double().softmax(1) for tokens, _ in one_by_one.test]).numpy()
    y = torch.cat([target for _, target in one_by_one.test]).numpy()
    assert report["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-9)
    assert report["ece"] == pytest.approx(MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")(
        torch.from_numpy(probs), torch.from_numpy(y)).item(), abs=1e-6)
    low, high = report["intervals"]["accuracy"]
    assert low < report["accuracy"] < high
    for name in ("f1_macro", "ece", "auroc", "average_precision"):
        assert len(report["intervals"][name]) == 2, name
    assert report["mistakes"] == {"shown": [], "skipped": "the inputs are not images: token ids, sentences of their "
                                                          "own lengths"}
    files = report["files"]
    assert Path(files["reliability_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(files["predictions_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(16)) and [int(r["target"]) for r in rows] == y.tolist()
    assert [int(r["prediction"]) for r in rows] == probs.argmax(1).tolist()
    assert [float(r["probability"]) for r in rows] == pytest.approx(probs.max(1).tolist(), abs=1e-6)
    assert {r["target_name"] for r in rows} <= {"neg", "pos"}


def test_a_checkpoint_meeting_another_vocabulary_is_refused(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.evaluate import main

    capsys.readouterr()
    assert main([str(CNN), "--checkpoint", str(trained["best"]), *trained["args"], "data.min_freq=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "vocabulary mismatch: the model was trained with" in err and "min_freq" in err, err



def test_a_classifier_s_words_are_no_text_to_sample(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """The vocabulary travels as a GPT's does, but a word list is a classifier's: harness.sample and
    logging.sample refuse it in one line instead of decoding ids as characters."""
    from harness.sample import main as sample_main
    from harness.train import main as train_main

    capsys.readouterr()
    assert sample_main([str(CNN), "--checkpoint", str(trained["best"]), *trained["args"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a vocabulary of" in err and "words (a classifier's)" in err, err
    assert train_main([str(CNN), *trained["args"], "logging.tensorboard=true", "logging.sample={tokens: 5}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logging.sample generates text: data.name=text_lines is not a text" in err, err
    assert [p.name for p in trained["run_dir"].parent.iterdir()] == [trained["run_dir"].name]  # no run folder left

@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict"])
def test_export_round_trips_token_ids_of_any_length(trained: dict, fmt: str, tmp_path: Path) -> None:
    from harness.export import main

    output = tmp_path / f"model.{fmt}"
    assert main([str(CNN), "--checkpoint", str(trained["best"]), "--format", fmt, "--output", str(output),
                 *trained["args"]]) == 0
    state = read_checkpoint(trained["best"])
    model = build_model(load_recipe(CNN, trained["args"]).model, vocab_size=len(state["extra"]["vocabulary"]))
    model.load_state_dict(state["model"])
    model.eval()
    for length in (1, 9, 40):  # none of them the length it was exported or checked with
        tokens = torch.randint(1, len(state["extra"]["vocabulary"]), (3, length), generator=torch.Generator())
        tokens[0, length // 2 + 1:] = 0  # padding in one row
        with torch.no_grad():
            expected = model(tokens)
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"input": tokens.numpy()})[0])
            meta = session.get_modelmeta().custom_metadata_map
            assert json.loads(meta["vocabulary"]) == state["extra"]["vocabulary"]
            assert json.loads(meta["input_shape"]) == ["batch", "tokens"] and meta["input_dtype"] == "int64"
        elif fmt == "torchscript":
            with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; it still loads
                warnings.simplefilter("ignore", FutureWarning)
                got = torch.jit.load(str(output))(tokens)
        else:
            fresh = build_model(load_recipe(CNN, trained["args"]).model, vocab_size=len(state["extra"]["vocabulary"]))
            fresh.load_state_dict(torch.load(output, weights_only=True))
            got = fresh.eval()(tokens)
            sidecar = json.loads(Path(f"{output}.json").read_text())
            assert sidecar["vocabulary"] == state["extra"]["vocabulary"]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_compress_prunes_and_quantizes_the_text_cnn(trained: dict, tmp_path: Path) -> None:
    from harness.workflows.compression import compress

    recipe = load_recipe(CNN, trained["args"])
    report = compress(recipe, trained["best"], sparsities=(0.5,), repeats=3, warmup=1, write=False, verbose=False)
    names = [row["name"] for row in report["rows"]]
    assert names == ["original", "pruned 50%", "int8 dynamic (Linear)"]
    assert report["rows"][0]["accuracy"] == pytest.approx(trained["summary"]["test"]["acc"])
    assert report["rows"][1]["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["rows"][2]["int8_linear_layers"] == 1  # the head


def test_compare_puts_the_transformer_beside_the_cnn_on_the_same_test_sentences(tmp_path: Path) -> None:
    from harness.workflows.comparison import compare

    write_fake_mr(tmp_path / "data", n_per_class=40)
    common = [o for o in overrides(tmp_path, CNN) if not o.startswith("model.")] + ["trainer.epochs=1"]
    result = compare([small_recipe(tmp_path, CNN), small_recipe(tmp_path, TRANSFORMER)], common)
    assert [m["label"] for m in result["models"]] == ["mr_cnn", "mr_transformer"] and not result["failed"]
    assert result["test_split"]["samples"] == 8 and result["test_split"]["classes"] == ["neg", "pos"]
    for model in result["models"]:
        assert model["params"][0] > 0 and model["flops_per_sample"][0] > 0 and 0 <= model["test_acc"][0] <= 1


def small_recipe(tmp_path: Path, recipe: Path) -> Path:
    """A copy of `recipe` with its small model written in: compare applies one set of overrides to every recipe."""
    import yaml

    text = yaml.safe_load(recipe.read_text())
    text["model"]["args"] = yaml.safe_load(SMALL[recipe].split("=", 1)[1])
    path = tmp_path / recipe.name
    path.write_text(yaml.safe_dump(text))
    return path


def test_a_resume_over_changed_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Files edited after the checkpoint: the rebuilt vocabulary is another one, and the resume says so."""
    from harness.train import main

    write_fake_mr(tmp_path / "data", n_per_class=40)
    args = [*overrides(tmp_path, CNN), "trainer.epochs=1", "scheduler.name=none"]  # so that epochs may grow
    assert main([str(CNN), *args]) == 0
    (run_dir,) = (tmp_path / "runs" / "mr_cnn").iterdir()
    neg = tmp_path / "data" / "rt-polaritydata" / "rt-polarity.neg"
    neg.write_bytes(neg.read_bytes().replace(b"film", b"flick"))  # a word renamed: the same number of words
    capsys.readouterr()
    assert main([str(run_dir / "config.yaml"), "trainer.epochs=2", "--resume",
                 str(run_dir / "checkpoints" / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "vocabulary mismatch" in err, err


def test_two_ranks_score_the_validation_sentences_as_one_process_does(tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks: each pads its own batches (to its own longest sentence), yet the run's final
    validation figures, summed over the ranks, equal one process scoring the same checkpoint with every
    sentence in one batch padded to the longest of all. Any padding that leaked into a sentence's logits,
    or a sentence counted twice or missed, would show in the confusion matrix or the loss. The transformer:
    padding would reach its logits through attention and pooling (the CNN's zero pad vectors rarely win
    its max, so a leak there can go unseen; tests/test_text_models.py checks its mask directly)."""
    from hang_guard import HANG_GUARD_S
    from test_distributed import torchrun

    from harness.core.trainer import Trainer
    from harness.recipe.build import build_loss, build_metrics

    write_fake_mr(tmp_path / "data", n_per_class=60)  # 120 sentences: 108 train (21 validate), 12 test
    args = [a for a in overrides(tmp_path, TRANSFORMER) if not a.startswith(("trainer.epochs", "data.val_size"))]
    args += ["trainer.epochs=2", "data.val_size=21", "data.eval_batch_size=4", "metrics.cm.type=confusion_matrix"]
    proc = torchrun(2, str(TRANSFORMER), *args, data_root=tmp_path / "data")
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("test: loss") == 1  # rank 0 alone reports
    (run,) = (tmp_path / "runs" / "mr_transformer").iterdir()  # one run folder for both ranks
    final = json.loads((run / "summary.json").read_text())["final"]

    recipe = load_recipe(TRANSFORMER, args)
    whole = build_data(recipe.data.model_copy(update={"eval_batch_size": 1000}), torch.device("cpu"),
                       recipe.trainer.seed)
    shards = [build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed, rank=r, world_size=2).val
              for r in (0, 1)]
    (tokens, _), = list(whole.val)  # all 21 validation sentences in one batch, padded to the longest of all
    assert tokens.shape == (21, int((tokens != 0).sum(1).max()))
    padded_to = [batch.shape[1] for shard in shards for batch, _ in shard]
    assert min(padded_to) < max(padded_to) == tokens.shape[1]  # the ranks' batches: lengths of their own
    state = read_checkpoint(run / "checkpoints" / "last.pt")  # saved after the last validation
    assert state["extra"]["vocabulary"] == whole.vocabulary  # both ranks built the one-process vocabulary
    model = build_model(recipe.model, vocab_size=len(whole.vocabulary))
    model.load_state_dict(state["model"])
    scorer = Trainer(model, None, build_loss(recipe.loss), build_metrics(recipe.metrics, whole.num_classes),
                     device="cpu", progress=False)
    single = scorer.validate(whole.val)
    assert final["val/cm"] == single["val/cm"] and sum(map(sum, final["val/cm"])) == 21
    assert final["val/acc"] == single["val/acc"]
    assert final["val/loss"] == pytest.approx(single["val/loss"], rel=1e-6)
