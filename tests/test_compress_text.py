"""`harness.compress` of a character-level GPT (`data.name: text_chars`): every variant scored per character
over the whole validation text, the original row as `harness.evaluate` reports it, the int8 row the
quantized model's own outputs, and what pruning and int8 do to the tied embedding and head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_shakespeare_char import RECIPE, TINY, run_folder, text_file

from harness.compress import main
from harness.metrics.tokens import IGNORE_INDEX
from harness.recipe.data import build_data
from harness.recipe.schema import load_recipe
from harness.recipe.weights import load_checkpoint_model
from harness.train import main as train_main
from harness.workflows.compression import compress, format_table, prune_global, quantize_int8, weight_sparsity
from harness.workflows.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

FAST_TIMING = {"warmup": 1, "repeats": 3, "max_seconds": 0.1}
INT8 = "int8 dynamic (Linear)"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The recipe's GPT, shrunk (2 layers, 32 wide), 40 steps on a few KB of words, then compressed."""
    tmp = tmp_path_factory.mktemp("compress_text")
    text_file(tmp)
    overrides = [*TINY, "trainer.max_steps=40", "trainer.val_every_n_steps=20", "logging.sample=null",
                 f"data.root={tmp / 'data'}", "data.path=words.txt",
                 f"logging.root={tmp / 'runs'}"]
    assert train_main([RECIPE, *overrides]) == 0
    checkpoint = run_folder(tmp) / "checkpoints" / "best.pt"
    recipe = load_recipe(RECIPE, overrides)
    report = compress(recipe, checkpoint, (0.5, 0.9), RECIPE, verbose=False, **FAST_TIMING)
    return {"recipe": recipe, "checkpoint": checkpoint, "report": report, "tmp": tmp}


def by_hand(model: torch.nn.Module, recipe) -> dict[str, float]:
    """Loss, bits per character and token accuracy of `model` over the validation windows, in the loader's
    batches (dynamic int8 quantizes each batch's activations with that batch's range), summed here with
    F.cross_entropy: none of the Trainer's or the metrics' code."""
    data = build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed)
    nll, correct, tokens = 0.0, 0, 0
    with torch.no_grad():
        for inputs, targets in data.test:
            logits = model.eval()(inputs)
            counted = targets != IGNORE_INDEX
            nll += F.cross_entropy(logits[counted].double(), targets[counted], reduction="sum").item()
            correct += int((logits.argmax(-1)[counted] == targets[counted]).sum())
            tokens += int(counted.sum())
    return {"loss": nll / tokens, "bits_per_token": nll / tokens / math.log(2), "token_accuracy": correct / tokens,
            "tokens": tokens}


def test_rows_table_and_files(run: dict) -> None:
    report = run["report"]
    assert [r["name"] for r in report["rows"]] == ["original", "pruned 50%", "pruned 90%", INT8]
    validation = len(text_file(run["tmp"]).read_text())
    validation -= int(validation * 0.9) + 1  # every validation character but the first is predicted
    assert report["num_tokens"] == validation and report["block_size"] == 16 and report["batch_sizes"] == [1, 8]
    assert report["tied_weights"] == ["lm_head.weight is wte.weight"]
    for row in report["rows"]:
        assert row["tokens_per_s"] == {b: rate * 16 for b, rate in row["samples_per_s"].items()}  # windows of 16
        assert row["tokens_per_s"]["8"] > 0 and row["latency_ms_p50"]["1"] > 0
        assert math.isfinite(row["loss"]) and math.isfinite(row["bits_per_token"])
        assert row["bits_per_token"] == pytest.approx(row["loss"] / math.log(2), rel=1e-6)
    run_dir = Path(report["run_dir"])
    assert json.loads((run_dir / "compress.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    table = (run_dir / "compress.md").read_text().splitlines()
    assert table[2].startswith("| model | zeros in Linear weights | val loss | bits per char | Δ bits per char |")
    assert [line.split(" | ")[0] for line in table[4:8]] == [f"| {r['name']}" for r in report["rows"]]
    assert "lm_head.weight is wte.weight (tied): pruning zeroes the shared matrix" in table[-1]


def test_original_row_is_what_evaluate_reports(run: dict) -> None:
    original = run["report"]["rows"][0]
    scored = evaluate(run["recipe"], run["checkpoint"], write=False, verbose=False)
    assert run["report"]["num_tokens"] == scored["num_tokens"]
    for key in ("loss", "bits_per_token", "perplexity", "token_accuracy"):
        assert original[key] == pytest.approx(scored[key], rel=1e-12), key
    assert (run["report"]["step"], run["report"]["weights"]) == (scored["step"], scored["weights"])
    assert original["loss"] < math.log(27) - 0.1  # it learnt something: below a uniform guess over 27 characters


def test_int8_rows_are_the_quantized_models_outputs(run: dict) -> None:
    rows = {r["name"]: r for r in run["report"]["rows"]}
    int8, original = rows[INT8], rows["original"]
    assert int8["int8_linear_layers"] == 2 * 4 + 1 and original["int8_linear_layers"] == 0  # 4 per block, the head
    assert int8["state_dict_bytes"] < 0.5 * original["state_dict_bytes"]
    assert 0 < abs(int8["loss"] - original["loss"]) < 0.05  # quantized: another model, nearly the same figures

    model, _, _ = load_checkpoint_model(run["recipe"], run["checkpoint"])
    quantized = quantize_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert isinstance(quantized.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    # the embedding stays float32 as trained: the tie is broken in the quantized copy only
    assert torch.equal(quantized.wte.weight, model.wte.weight) and model.lm_head.weight is model.wte.weight
    for name, variant in ((INT8, quantized), ("original", model)):
        hand = by_hand(variant, run["recipe"])
        assert hand["tokens"] == run["report"]["num_tokens"]
        assert rows[name]["loss"] == pytest.approx(hand["loss"], rel=1e-6), name
        assert rows[name]["bits_per_token"] == pytest.approx(hand["bits_per_token"], rel=1e-6), name
        assert rows[name]["token_accuracy"] == hand["token_accuracy"], name


def test_pruning_zeroes_the_tied_matrix_once_and_keeps_the_tie(run: dict) -> None:
    rows = {r["name"]: r for r in run["report"]["rows"]}
    assert rows["pruned 50%"]["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert rows["pruned 90%"]["weight_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows["pruned 90%"]["loss"] > rows["original"]["loss"]
    model, _, _ = load_checkpoint_model(run["recipe"], run["checkpoint"])
    before = model.wte.weight.detach().clone()
    pruned = prune_global(model, 0.5)
    assert pruned.lm_head.weight is pruned.wte.weight  # one matrix still: the embedding shares the head's zeros
    assert (pruned.wte.weight == 0).any() and weight_sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(model.wte.weight, before)  # the original's embedding untouched


def test_at_bf16_the_report_also_holds_what_evaluate_reports(run: dict) -> None:
    """The rows are float32 (the int8 kernels need it); a bf16 recipe's report also holds the original scored
    as evaluate scores it, at bf16, per character."""
    assert run["report"]["original_at_recipe_precision"] is None  # a float32 recipe: the original row is it
    recipe = run["recipe"].model_copy(deep=True)
    recipe.trainer.precision = "bf16"
    report = compress(recipe, run["checkpoint"], (0.5,), write=False, verbose=False, **FAST_TIMING)
    at_bf16, scored = report["original_at_recipe_precision"], evaluate(recipe, run["checkpoint"], write=False,
                                                                       verbose=False)
    assert (at_bf16["precision"], at_bf16["device"]) == ("bf16", "cpu")
    for key in ("loss", "bits_per_token", "token_accuracy"):
        assert at_bf16[key] == pytest.approx(scored[key], rel=1e-12), key
    assert at_bf16["loss"] != report["rows"][0]["loss"]  # bf16 does round: the float32 row is another figure
    assert f"as harness.evaluate scores it): loss {scored['loss']:.4f}, bits per char" in format_table(report)


def test_bad_sparsities_on_a_text_recipe_are_one_line(run: dict, tmp_path: Path, capsys) -> None:
    overrides = [*TINY, f"data.root={run['tmp'] / 'data'}", "data.path=words.txt", f"logging.root={tmp_path}"]
    assert main([RECIPE, *overrides, "--checkpoint", str(run["checkpoint"]), "--sparsities", "0,0.5"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --sparsities 0.0,0.5: each must be between 0 and 1 (exclusive)\n"
    assert list(tmp_path.iterdir()) == []
