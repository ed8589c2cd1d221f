"""Transfer learning: init_from (checkpoint or state_dict, renamed, head skipped), frozen parameters,
per-group learning rates, and the shipped pretrain -> fine-tune recipes end to end on fake files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from torch import nn

from harness import Trainer
from harness.core.checkpoint import read_checkpoint
from harness.errors import HarnessError
from harness.recipe.build import build_model, build_trainer, freeze_parameters, matches_prefix, parameter_groups
from harness.recipe.data import build_data
from harness.recipe.schema import ModelConfig, OptimConfig, validate_recipe
from harness.recipe.weights import init_model

HEAD = "classifier.4"  # the last Linear of models/cnn.py


def cnn(num_classes: int = 5, **init) -> tuple[nn.Module, ModelConfig]:
    cfg = ModelConfig(name="cnn", args={"channels": [4, 8], "hidden": 16, "num_classes": num_classes}, **init)
    return build_model(cfg), cfg


@pytest.fixture
def pretrained(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A 5-class CNN saved as a harness checkpoint (what a run's best.pt is)."""
    torch.manual_seed(1)
    model, _ = cnn(5)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu",
                      progress=False, loggers=[])
    path = trainer.save_checkpoint(tmp_path / "best.pt")
    return model, path


def test_init_from_checkpoint_loads_all_but_the_skipped_head(pretrained) -> None:
    source, path = pretrained
    torch.manual_seed(2)
    model, cfg = cnn(3, init_from=str(path), init_skip=[HEAD])
    built_head = model.classifier[4].weight.detach().clone()
    line = init_model(model, cfg)
    assert line == f"initialised 14 of 16 tensors from {path}; 2 as built"
    for name, value in model.state_dict().items():  # BatchNorm buffers included
        if matches_prefix(name, HEAD):
            continue
        assert torch.equal(value, source.state_dict()[name]), name
    assert torch.equal(model.classifier[4].weight, built_head)


def test_a_size_mismatched_head_is_a_clear_error(pretrained) -> None:
    _, path = pretrained
    model, cfg = cnn(3, init_from=str(path))
    with pytest.raises(HarnessError) as info:
        init_model(model, cfg)
    message = str(info.value)
    assert "classifier.4.weight is (5, 16) in the file but (3, 16) in the model (2 such tensors)" in message
    assert "model.init_skip=[classifier.4]" in message and "\n" not in message


def test_plain_state_dict_renamed_with_init_map(tmp_path: Path) -> None:
    source, _ = cnn(5)
    # a backbone saved under other names: "backbone.*" for "features.*", "head.*" for "classifier.*"
    renamed = {k.replace("features", "backbone").replace("classifier", "head"): v
               for k, v in source.state_dict().items()}
    torch.save(renamed, tmp_path / "weights.pt")
    mapping = {"backbone": "features", "head.": "classifier"}  # a trailing dot is allowed
    model, cfg = cnn(5, init_from=str(tmp_path / "weights.pt"), init_map=mapping)
    assert init_model(model, cfg) == f"initialised 16 of 16 tensors from {tmp_path / 'weights.pt'}"
    for name, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[name])


def test_strict_names_missing_and_unexpected_weights_and_non_strict_loads_the_rest(tmp_path: Path) -> None:
    source, _ = cnn(5)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier")}
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "partial.pt")
    model, cfg = cnn(5, init_from=str(tmp_path / "partial.pt"))
    with pytest.raises(HarnessError, match=r"the file lacks 4 \(classifier.1.weight, .*; the model lacks 1 "
                                           r"\(extra.weight\); rename with model.init_map"):
        init_model(model, cfg)
    model, cfg = cnn(5, init_from=str(tmp_path / "partial.pt"), init_strict=False)
    assert init_model(model, cfg) == f"initialised 12 of 16 tensors from {tmp_path / 'partial.pt'}; 4 as built"
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)


@pytest.mark.parametrize(
    ("content", "init", "expected"),
    [
        (None, {}, "model.init_from: file not found"),
        (b"not a checkpoint", {}, "cannot be read"),
        ({"a": [1, 2]}, {}, "neither a harness checkpoint nor a state_dict"),
        ("cnn", {"init_skip": ["head"]}, "model.init_skip: 'head' matches no weight"),
        ("cnn", {"init_map": {"backbone": "features"}}, "model.init_map: 'backbone' matches no weight"),
    ],
)
def test_bad_init_is_one_line(tmp_path: Path, content, init, expected: str) -> None:
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "cnn":
        torch.save(cnn(5)[0].state_dict(), path)
    elif content is not None:
        torch.save(content, path)
    model, cfg = cnn(5, init_from=str(path), **init)
    with pytest.raises(HarnessError) as info:
        init_model(model, cfg)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_glob_picks_the_newest_file(tmp_path: Path) -> None:
    for i, stamp in enumerate(("20250101-000000", "20250102-000000")):
        folder = tmp_path / stamp
        folder.mkdir()
        torch.save(cnn(5)[0].state_dict(), folder / "best.pt")
        os.utime(folder / "best.pt", (time.time() + i, time.time() + i))
    model, cfg = cnn(5, init_from=str(tmp_path / "*" / "best.pt"))
    assert str(tmp_path / "20250102-000000" / "best.pt") in init_model(model, cfg)
    model, cfg = cnn(5, init_from=str(tmp_path / "nothing-*.pt"))
    with pytest.raises(HarnessError, match="no file matches"):
        init_model(model, cfg)


def test_prefixes_match_whole_dotted_names() -> None:
    assert matches_prefix("features.0.weight", "features")
    assert matches_prefix("features.0.weight", "features.")
    assert matches_prefix("features", "features")
    assert not matches_prefix("features_extra.weight", "features")
    assert not matches_prefix("classifier.40.weight", "classifier.4")
    assert matches_prefix("anything", "")


def test_freeze_sets_requires_grad_and_unknown_prefixes_fail() -> None:
    model, _ = cnn(5)
    assert freeze_parameters(model, ["features", "classifier.1"]) == 6 + 2
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.4.weight", "classifier.4.bias"]
    with pytest.raises(HarnessError, match=r"model.freeze: 'backbone' matches no parameter; the model's modules: "
                                           r"features, classifier"):
        freeze_parameters(model, ["backbone"])


def test_parameter_groups_leave_frozen_parameters_out() -> None:
    model, _ = cnn(5)
    freeze_parameters(model, ["features"])
    cfg = OptimConfig(lr=1e-3, param_groups=[{"prefix": HEAD, "lr": 1e-2, "weight_decay": 0.0}])
    groups = parameter_groups(model, cfg)
    assert [len(g["params"]) for g in groups] == [2, 2]  # classifier.1 in the default group, the head in its own
    assert "lr" not in groups[0] and groups[1]["lr"] == 1e-2 and groups[1]["weight_decay"] == 0.0
    frozen = {id(p) for p in model.features.parameters()}
    assert not frozen & {id(p) for g in groups for p in g["params"]}
    with pytest.raises(HarnessError, match="prefix 'features' matches no trainable parameter; its parameters "
                                           "are frozen"):
        parameter_groups(model, OptimConfig(param_groups=[{"prefix": "features", "lr": 1e-4}]))
    with pytest.raises(HarnessError, match="prefix 'backbone' matches no trainable parameter"):
        parameter_groups(model, OptimConfig(param_groups=[{"prefix": "backbone", "lr": 1e-4}]))


def recipe(fake_data, tmp_path: Path, **sections):
    raw = {
        "model": {"name": "cnn", "args": {"channels": [4, 8], "hidden": 16}},
        "data": {"name": "mnist", "root": str(fake_data.root), "download": False, "val_size": 8, "batch_size": 8},
        "trainer": {"epochs": 2, "device": "cpu", "progress": False},
        "logging": {"root": str(tmp_path / "runs")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_recipe(raw)


def test_frozen_parameters_stay_bit_identical_through_training(fake_data, tmp_path: Path) -> None:
    r = recipe(fake_data, tmp_path, model={"name": "cnn", "args": {"channels": [4, 8], "hidden": 16},
                                          "freeze": ["features", "classifier.1"]},
               optim={"name": "adamw", "lr": 1e-2, "weight_decay": 0.1,
                      "param_groups": [{"prefix": HEAD, "lr": 3e-2}]},
               scheduler={"name": "onecycle"})
    torch.manual_seed(0)
    model = build_model(r.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = build_data(r.data, torch.device("cpu"), 0)
    trainer = build_trainer(r, model, data, run_dir=None, device=torch.device("cpu"))
    assert trainer.optimizer.param_groups[0]["max_lr"] == 3e-2  # one-cycle peaks at the group's own lr
    trainer.fit(data.train, data.val, epochs=2)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.startswith(HEAD), name
        assert param.requires_grad == name.startswith(HEAD), name


def test_pretrain_then_finetune_recipes_on_fake_files(fake_data, tmp_path: Path, monkeypatch, capsys) -> None:
    """recipes/transfer_*.yaml as shipped, through the CLI, shrunk to the 40 fake images."""
    from harness.train import main

    monkeypatch.chdir(tmp_path)  # the fine-tune recipe finds runs/transfer_pretrain_0to4/*/checkpoints/best.pt here
    small = [f"data.root={fake_data.root}", "data.download=false", "data.val_size=5", "data.batch_size=8",
             "trainer.epochs=1", "trainer.progress=false", "trainer.device=cpu"]
    assert main([str(REPO / "recipes" / "transfer_pretrain_0to4.yaml"), *small]) == 0
    pretrained = read_checkpoint(next(tmp_path.glob("runs/transfer_pretrain_0to4/*/checkpoints/best.pt")))
    for name in ("transfer_finetune_5to9", "transfer_scratch_5to9"):
        capsys.readouterr()
        assert main([str(REPO / "recipes" / f"{name}.yaml"), *small, "data.train_size=8"]) == 0
        tuned = read_checkpoint(next(tmp_path.glob(f"runs/{name}/*/checkpoints/last.pt")))
        features = [k for k in tuned["model"] if k.startswith("features.") and "running" not in k
                    and "num_batches" not in k]
        same = [torch.equal(tuned["model"][k], pretrained["model"][k]) for k in features]
        if name == "transfer_finetune_5to9":
            assert "# initialised 14 of 16 tensors from runs/transfer_pretrain_0to4/" in capsys.readouterr().out
            assert all(same)  # frozen: bit-identical to the pretrained weights
        else:
            assert not any(same)
