"""`harness.export` of the character-level GPT (`data.name: text_chars`): int64 character ids in, both the batch
and the sequence dimension dynamic, the vocabulary in the metadata, the check on real validation windows;
each format loaded back as a user would and run on windows cut here from the text by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_shakespeare_char import RECIPE, TINY, run_folder, text_file

from harness.core.checkpoint import read_checkpoint
from harness.export import main
from harness.recipe.build import build_model
from harness.recipe.schema import load_recipe
from harness.train import main as train_main
from harness.workflows.export import METADATA_FILE, export

pytestmark = [pytest.mark.usefixtures("one_thread"),  # see conftest.py
              pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 6-step run of the recipe's GPT, shrunk, on a few KB of words."""
    tmp = tmp_path_factory.mktemp("export_text")
    text = text_file(tmp).read_text()
    overrides = [*TINY, "logging.sample=null", f"data.root={tmp / 'data'}", "data.path=words.txt"]
    assert train_main([RECIPE, *overrides, f"logging.root={tmp / 'runs'}"]) == 0
    return {"folder": run_folder(tmp), "overrides": overrides, "text": text}


def by_hand(run: dict, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` windows of `length` characters from the start of the validation text (its last 10 %), as ids in
    the sorted characters, and the logits of the recipe's model with best.pt's raw weights: no harness data code."""
    text = run["text"]
    vocabulary = sorted(set(text))
    validation = text[int(len(text) * 0.9):]
    ids = torch.tensor([vocabulary.index(ch) for ch in validation[: rows * length]]).view(rows, length)
    model = build_model(load_recipe(RECIPE, run["overrides"]).model)
    model.load_state_dict(torch.load(run["folder"] / "checkpoints" / "best.pt", weights_only=True)["model"])
    with torch.no_grad():
        return ids, model.eval()(ids)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict"])
def test_the_gpt_exports_with_its_vocabulary_and_runs_any_batch_and_length(run: dict, tmp_path: Path,
                                                                           fmt: str) -> None:
    output = tmp_path / f"gpt.{fmt}"
    recipe = load_recipe(RECIPE, run["overrides"])
    result = export(recipe, run["folder"] / "checkpoints" / "best.pt", fmt, output, verbose=False)
    assert result["check_batch_size"] == 25 and result["check_lengths"] == [16, 8]  # every validation window
    assert result["max_abs_diff"] <= result["atol"] == 1e-4
    vocabulary = "".join(sorted(set(run["text"])))
    step = read_checkpoint(run["folder"] / "checkpoints" / "best.pt")["global_step"]
    expected_meta = {"input_shape": ["batch", "sequence"], "input_dtype": "int64", "vocabulary": vocabulary,
                     "block_size": 16, "step": step}
    assert expected_meta.items() <= result["metadata"].items()
    assert not {"classes", "mean", "std"} & set(result["metadata"])

    ids, expected = by_hand(run, rows=5, length=11)  # neither the export's batch (2) nor the check's lengths
    if fmt == "onnx":
        import onnx
        import onnxruntime

        proto = onnx.load(str(output))
        (given,) = proto.graph.input
        assert given.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in given.type.tensor_type.shape.dim] == ["batch", "sequence"]
        written = {entry.key: entry.value for entry in proto.metadata_props}
        assert written["vocabulary"] == vocabulary and written["block_size"] == "16"  # strings as they are, else JSON
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": ids.numpy()})[0])
    elif fmt == "torchscript":
        files = {METADATA_FILE: ""}
        loaded = torch.jit.load(str(output), _extra_files=files)
        assert json.loads(files[METADATA_FILE])["vocabulary"] == vocabulary
        got = loaded(ids)
    else:
        from models.gpt import GPT

        assert json.loads(Path(result["metadata_file"]).read_text())["vocabulary"] == vocabulary
        fresh = GPT(vocab_size=27, block_size=16, n_layer=2, n_head=2, n_embd=32)
        fresh.load_state_dict(torch.load(output, weights_only=True))
        got = fresh.eval()(ids)
    assert got.shape == expected.shape == (5, 11, 27)
    assert (got - expected).abs().max() < 1e-4


def test_the_command_prints_the_check_and_fails_above_atol(run: dict, tmp_path: Path, capsys) -> None:
    command = [RECIPE, *run["overrides"], "--checkpoint", str(run["folder"] / "checkpoints" / "best.pt"),
               "--format", "onnx"]
    assert main([*command, "--output", str(tmp_path / "a.onnx")]) == 0
    out = capsys.readouterr().out
    assert "checked on 25 validation windows of 16 and 8 characters: max abs difference" in out
    assert "input 'input' (batch, sequence) int64: character ids" in out and "vocabulary of 27 characters" in out
    diff = float(out.split("max abs difference from the PyTorch model ")[1].split()[0])
    assert 0 < diff < 1e-5  # ONNX Runtime sums in another order: not bit-identical, far below the tolerance
    assert main([*command, "--output", str(tmp_path / "b.onnx"), "--atol", f"{diff / 2:g}"]) == 1
    err = capsys.readouterr().err
    assert "on 25 validation windows of 16 and 8 characters (exported with a batch of 2)" in err
    assert not (tmp_path / "b.onnx").exists()
