"""recipes/shakespeare_char.yaml end to end, shrunk to a 2-layer GPT on a few KB of text and a few steps: the
run folder (steps, the whole validation split at the end, throughput, the vocabulary in the checkpoint, text
samples in TensorBoard), `python -m harness.sample`, and bad text input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_text_chars import shakespeare

from harness.core.checkpoint import read_checkpoint
from harness.sample import main as sample_main
from harness.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

RECIPE = "recipes/shakespeare_char.yaml"
TINY = ["model.args={vocab_size: 27, block_size: 16, n_layer: 2, n_head: 2, n_embd: 32}", "data.block_size=16",
        "data.batch_size=4", "data.eval_batch_size=8", "trainer.max_steps=6", "trainer.val_every_n_steps=3",
        "trainer.limit_val_batches=2", "scheduler.warmup_steps=2", "trainer.device=cpu", "trainer.progress=false",
        "logging.sample={prompt: 'the ', tokens: 12}"]


def text_file(tmp_path: Path, text: str | None = None) -> Path:
    """A few KB of lower-case words: 26 letters and the space, 27 characters."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards hex five big quacking jumpy zebras"
    path = tmp_path / "data" / "words.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else " ".join([words] * 40))
    return path


def train(tmp_path: Path, *overrides: str) -> int:
    return train_main([RECIPE, *TINY, f"data.root={tmp_path / 'data'}", "data.path=words.txt",
                       f"logging.root={tmp_path / 'runs'}", *overrides])


def run_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "runs" / "shakespeare_char").iterdir()
    return folder


def test_the_recipe_trains_by_steps_and_scores_the_whole_validation_split(tmp_path: Path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    text = text_file(tmp_path).read_text()
    assert train(tmp_path) == 0
    run = run_folder(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 6 and summary["best_step"] in (3, 6) and "epochs_run" not in summary
    validation = len(text) - int(len(text) * 0.9) - 1  # characters predicted: all of the last 10 % but its first
    assert summary["test_samples"] == validation
    assert summary["test_covers"] == f"{validation} tokens: the whole validation split (text_chars has no test split)"
    test = summary["test"]
    assert test["ppl"] == pytest.approx(torch.tensor(test["loss"]).exp().item(), rel=1e-6)
    assert test["bpc"] == pytest.approx(test["loss"] / torch.tensor(2.0).log().item(), rel=1e-6)
    throughput = summary["throughput"]
    assert throughput["flops_per_step"] > 0 and throughput["tokens_per_s"] > 0 and throughput["peak_memory_mb"] > 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [3, 6, 6]  # two validations, then the test line
    assert history[0]["tokens_per_s"] == pytest.approx(history[0]["samples_per_s"] * 16)
    vocabulary = "".join(sorted(set(text)))
    for name in ("best.pt", "last.pt"):
        assert read_checkpoint(run / "checkpoints" / name)["extra"]["vocabulary"] == vocabulary

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    samples = events.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [3, 6]
    shown = samples[-1].tensor_proto.string_val[0].decode()
    assert shown.startswith("    the ") and len(shown) == 4 + 4 + 12 and set(shown[4:]) <= set(vocabulary)
    assert {"tokens_per_s", "flops_per_s", "peak_memory_mb", "val/ppl"} <= set(events.Tags()["scalars"])

    capsys.readouterr()
    best = str(run / "checkpoints" / "best.pt")
    command = [RECIPE, *TINY, "--checkpoint", best, "--prompt", "lazy", "--tokens", "40"]
    assert sample_main(command) == 0
    first = capsys.readouterr().out.rstrip("\n")
    assert first.startswith("lazy") and len(first) == 44 and set(first) <= set(vocabulary)
    assert sample_main(command) == 0 and capsys.readouterr().out.rstrip("\n") == first  # seeded
    assert sample_main([*command, "--seed", "1"]) == 0 and capsys.readouterr().out.rstrip("\n") != first

    # harness.evaluate scores the checkpoint per token: the run's final test pass, figure for figure.
    from harness.evaluate import main as evaluate_main

    assert evaluate_main([str(run / "config.yaml"), "--checkpoint", best]) == 0
    scored = json.loads((run / "eval-best-test.json").read_text())
    assert scored["num_tokens"] == validation and scored["step"] == summary["best_step"]
    assert scored["loss"] == pytest.approx(test["loss"], rel=1e-9)
    assert scored["perplexity"] == pytest.approx(test["ppl"], rel=1e-9)
    assert scored["bits_per_token"] == pytest.approx(test["bpc"], rel=1e-9)

    # Resuming the finished run changes nothing and says so.
    assert train_main([str(run / "config.yaml"), "--resume", str(run / "checkpoints" / "last.pt")]) == 0
    assert "already finished" in capsys.readouterr().out


def test_bad_text_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    def error(*args: str) -> str:
        assert train(tmp_path, *args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    text_file(tmp_path)
    missing = error("data.path=nope/input.txt")
    assert f"data.path must be at {tmp_path / 'data' / 'nope' / 'input.txt'}" in missing
    (tmp_path / "data" / "latin.txt").write_bytes("na\u00efve ".encode("latin-1") * 50)
    assert "byte offset 2 (0xef) is not valid utf-8 (data.encoding=utf-8)" in error("data.path=latin.txt")
    (tmp_path / "data" / "empty.txt").write_bytes(b"")
    assert "the file is empty" in error("data.path=empty.txt")
    assert "data.block_size=600 is larger than the validation text (388 characters)" in error(
        "data.block_size=600", "model.args.block_size=600")
    assert "set trainer.max_steps" in error("trainer.max_steps=null", "trainer.val_every_n_steps=null")
    # before the text is read (it is not even there): a warmup as long as the run
    assert "scheduler.warmup_steps=6 leaves no steps for cosine (trainer.max_steps=6 optimizer steps in all)" in \
        error("scheduler.warmup_steps=6", "data.path=nope/input.txt")
    assert "data.val_size does not apply to text_chars" in error("data.val_size=100")
    assert "model.args.vocab_size=30: the embedding is sized from the data's vocabulary, 27 tokens" in error(
        "model.args.vocab_size=30")
    assert "'Z' not in the model's vocabulary" in error("logging.sample.prompt=Zebra")
    assert not (tmp_path / "runs").exists()
    # refused before any data is read: the MNIST files are not even there
    assert train_main(["recipes/mnist_mlp.yaml", "logging.sample={prompt: 'a'}", f"data.root={tmp_path / 'none'}",
                       f"logging.root={tmp_path / 'runs'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: logging.sample generates text: data.name=mnist is not a text to continue (text_chars)"]
    from harness.cv import main as cv_main

    assert cv_main([RECIPE, *TINY, f"data.root={tmp_path / 'data'}", "data.path=words.txt",
                    f"logging.root={tmp_path / 'runs'}", "--folds", "2"]) == 2
    assert "text_chars has training and validation windows, not samples" in capsys.readouterr().err


def test_a_checkpoint_refuses_text_with_another_vocabulary(tmp_path: Path, capsys) -> None:
    path = text_file(tmp_path)
    assert train(tmp_path) == 0
    run = run_folder(tmp_path)
    path.write_text(path.read_text().replace("z", "Z"))  # the same file, now with 'Z' where 'z' was
    (run / "summary.json").unlink()  # as if killed during the final test: the resume builds the data again
    capsys.readouterr()
    assert train_main([str(run / "config.yaml"), "--resume", str(run / "checkpoints" / "last.pt")]) == 2
    mismatch = "the model was trained with a vocabulary of 27 characters, the data has 27 (characters in one but " \
               "not the other: 'Zz')"
    assert mismatch in capsys.readouterr().err
    from harness.evaluate import main as evaluate_main

    assert evaluate_main([str(run / "config.yaml"), "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and mismatch in err[0]


def test_the_shipped_recipe_runs_on_the_real_text(tmp_path: Path) -> None:
    """The real tiny Shakespeare through the recipe as shipped, but for the budget: 4 steps, 2 validation batches."""
    real = shakespeare()
    assert train_main([RECIPE, f"data.root={real.parent.parent}", "trainer.max_steps=4", "trainer.val_every_n_steps=2",
                       "scheduler.warmup_steps=1", "trainer.limit_test_batches=3", "trainer.device=cpu",
                       "trainer.progress=false", "logging.sample=null", f"logging.root={tmp_path / 'runs'}"]) == 0
    summary = json.loads((run_folder(tmp_path) / "summary.json").read_text())
    assert summary["num_parameters"] == 795_904 + 64 * 128  # nanoGPT's 0.80M, and the position embedding
    assert 3.0 < summary["test"]["loss"] < 4.5  # from ln(65) = 4.17 at the start: 4 steps barely move it


def test_two_ranks_count_every_validation_character_once(tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks: each trains on its own windows; the final pass over the whole validation
    split, sharded by rank, sums to exactly what one process computes from the same checkpoint."""
    from hang_guard import communicate_guarded
    from test_distributed import torchrun

    from harness.core.trainer import Trainer
    from harness.metrics import Perplexity, TokenCrossEntropyLoss
    from harness.recipe.build import build_model
    from harness.recipe.data import build_data
    from harness.recipe.schema import load_recipe

    text_file(tmp_path)
    overrides = [*TINY, "logging.sample=null", "data.path=words.txt", f"logging.root={tmp_path / 'runs'}"]
    proc = torchrun(2, RECIPE, *overrides, data_root=tmp_path / "data")
    out, err = communicate_guarded(proc)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("test: loss") == 1  # rank 0 alone reports
    run = run_folder(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 6 and summary["test_samples"] == 387  # every predicted character, once

    recipe = load_recipe(RECIPE, [*overrides, f"data.root={tmp_path / 'data'}"])
    model = build_model(recipe.model)
    model.load_state_dict(read_checkpoint(run / "checkpoints" / "best.pt")["model"])
    single = build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed)
    scores = Trainer(model, None, TokenCrossEntropyLoss(), {"ppl": Perplexity()}, device="cpu",
                     progress=False).evaluate(single.test)
    assert summary["test"]["loss"] == pytest.approx(scores["loss"], rel=1e-6)
    assert summary["test"]["ppl"] == pytest.approx(scores["ppl"], rel=1e-6)
    ranks = [build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed, rank=r, world_size=2).train
             for r in (0, 1)]
    (x0, _), (x1, _) = (next(iter(r)) for r in ranks)
    assert not torch.equal(x0, x1)  # each rank trains on its own windows


def test_fast_dev_run_takes_one_step_and_writes_nothing(tmp_path: Path, capsys) -> None:
    text_file(tmp_path)
    assert train(tmp_path, "trainer.fast_dev_run=true") == 0
    out = capsys.readouterr().out
    assert "the first 1 batch of the validation split" in out and "final weights, step 1)" in out
    assert not (tmp_path / "runs").exists()
