"""`python -m harness.compare` on character-level GPTs (tiny ones, a few steps, on a few KB of words): the table
is `harness.evaluate`'s per-token figures, and the pairs' Δ loss and its interval come from a bootstrap over the
validation windows, checked against per-window losses computed by hand and resampled with numpy."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO
from test_shakespeare_char import TINY, text_file

from harness.data.text_chars import IGNORE_INDEX, SequentialWindows, load_text_chars
from harness.recipe.weights import load_checkpoint_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

RECIPE = REPO / "recipes/shakespeare_char.yaml"


def gpt_recipe(tmp_path: Path, name: str, n_layer: int, max_steps: int) -> str:
    """The shipped recipe with a tiny GPT of `n_layer` layers, trained `max_steps` steps."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["model"]["args"] = {"vocab_size": 27, "block_size": 16, "n_layer": n_layer, "n_head": 2, "n_embd": 32}
    recipe["trainer"]["max_steps"] = max_steps
    recipe["data"]["block_size"] = 16
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def sets(tmp_path: Path) -> list[str]:
    items = [s for s in TINY if not s.startswith(("model.args=", "trainer.max_steps="))]
    items += [f"data.root={tmp_path / 'data'}", "data.path=words.txt", f"logging.root={tmp_path / 'runs'}"]
    return [arg for item in items for arg in ("--set", item)]


def window_nll(recipe_path: str, checkpoint: str, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per validation window, in SequentialWindows' order: summed NLL (F.cross_entropy of the model's logits) and
    characters predicted, computed here without the harness's scoring pass."""
    from harness.recipe.schema import load_recipe

    recipe = load_recipe(recipe_path, sets(tmp_path)[1::2])
    model = load_checkpoint_model(recipe, checkpoint)[0].eval()
    _, val = load_text_chars(tmp_path / "data" / "words.txt", "utf-8").split()
    windows = SequentialWindows(val, 16, 8)
    with torch.no_grad():
        logits = model(windows.inputs).double()
    nll = F.cross_entropy(logits.transpose(1, 2), windows.targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(1).numpy(), (windows.targets != IGNORE_INDEX).sum(1).numpy()


def test_two_gpts_match_evaluate_and_the_window_bootstrap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main
    from harness.recipe.schema import load_recipe
    from harness.workflows.evaluation import evaluate

    text_file(tmp_path)
    deep, shallow = gpt_recipe(tmp_path, "deep", 2, 6), gpt_recipe(tmp_path, "shallow", 1, 6)
    assert main([deep, shallow, *sets(tmp_path), "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    (compare_dir,) = (tmp_path / "runs" / "compare").iterdir()
    with (compare_dir / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in rows] == [("deep", "0"), ("deep", "1"), ("shallow", "0"), ("shallow", "1")]
    for row in rows:  # the very figures evaluate reports for each checkpoint
        recipe = load_recipe(row["recipe"], [*sets(tmp_path)[1::2], f"trainer.seed={row['seed']}"])
        scores = evaluate(recipe, row["checkpoint"], "test", write=False, verbose=False)
        assert float(row["val_loss"]) == scores["loss"] and float(row["bits_per_char"]) == scores["bits_per_token"]
        assert float(row["perplexity"]) == scores["perplexity"]
        assert float(row["token_acc"]) == scores["token_accuracy"] and int(row["characters"]) == scores["num_tokens"]
    assert int(rows[0]["params"]) > int(rows[2]["params"]) > 0 and rows[1]["params"] == ""
    assert float(rows[0]["infer_tokens_per_s"]) > 0 and int(rows[0]["flops_per_window"]) > 0

    result = json.loads((compare_dir / "compare.json").read_text())
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"], pair["seed_a"], pair["seed_b"]) == ("deep", "shallow", 0, 0)
    nll_a, tokens = window_nll(deep, rows[0]["checkpoint"], tmp_path)
    nll_b, tokens_b = window_nll(shallow, rows[2]["checkpoint"], tmp_path)
    assert (tokens == tokens_b).all() and pair["windows"] == len(tokens) and pair["characters"] == tokens.sum()
    difference = nll_a - nll_b
    assert pair["difference"] == pytest.approx(difference.sum() / tokens.sum(), abs=1e-6)
    assert pair["bits_difference"] == pytest.approx(pair["difference"] / math.log(2), rel=1e-12)
    # The same 1,000 draws of windows (seed 0), the ratio and the percentiles computed in numpy.
    draws = torch.randint(0, len(tokens), (1000, len(tokens)), generator=torch.Generator().manual_seed(0)).numpy()
    resampled = difference[draws].sum(1) / tokens[draws].sum(1)
    assert pair["interval"] == pytest.approx(np.percentile(resampled, [2.5, 97.5]), abs=1e-6)
    assert pair["p_value"] == pytest.approx(min(1, 2 * min((resampled <= 0).mean(), (resampled >= 0).mean())),
                                            abs=2e-3)
    # Seeds: the per-seed differences of the losses, and each model's t-interval over its seeds.
    losses = [float(r["val_loss"]) for r in rows]
    assert pair["over_seeds"]["differences"] == pytest.approx([losses[0] - losses[2], losses[1] - losses[3]],
                                                              abs=1e-6)
    assert "the window is the resampling unit" in out.lower() and "not a test independent" in out
    assert "Δ loss over seeds" in out and "t-interval of the mean" in out


def test_a_model_against_itself_is_no_clear_difference_and_a_trained_one_is_better(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    text_file(tmp_path)
    long, short = gpt_recipe(tmp_path, "long", 1, 60), gpt_recipe(tmp_path, "short", 1, 3)
    assert main([long, short, *sets(tmp_path)]) == 0
    (first,) = (tmp_path / "runs" / "compare").iterdir()
    result = json.loads((first / "compare.json").read_text())
    (pair,) = result["pairs"]
    assert pair["interval"][1] < 0 and pair["verdict"].startswith("long better")

    checkpoint = result["runs"][1]["checkpoint"]  # the short one, twice, from its checkpoint: no training
    assert main([short, short, *sets(tmp_path), "--checkpoint", f"short={checkpoint}",
                 "--checkpoint", f"short-2={checkpoint}"]) == 0
    (again,) = [d for d in (tmp_path / "runs" / "compare").iterdir() if d != first]
    (pair,) = json.loads((again / "compare.json").read_text())["pairs"]
    assert pair["difference"] == 0 and pair["interval"] == [0, 0] and pair["p_value"] == 1
    assert pair["verdict"] == "no clear difference (p = 1)"
    assert "no clear difference" in capsys.readouterr().out


def test_models_on_other_windows_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    text_file(tmp_path)
    wide = yaml.safe_load(Path(gpt_recipe(tmp_path, "wide", 1, 3)).read_text())
    wide["data"]["block_size"] = 8
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(wide))
    given = [arg for arg in sets(tmp_path) if arg != "data.block_size=16"]
    given = [arg for i, arg in enumerate(given) if not (arg == "--set" and given[i + 1] == "--set")]
    assert main([gpt_recipe(tmp_path, "a", 1, 3), str(tmp_path / "wide.yaml"), *given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a and wide would be scored on different validation windows" in err, err
    assert "data.block_size=16 vs 8" in err and not (tmp_path / "runs").exists()
