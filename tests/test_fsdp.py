"""FSDP's pieces in one process (no process group): which blocks are sharded, activation checkpointing,
byte accounting, sharded checkpoints (layout, exact resume, a crash at each step of a save,
consolidation) and the recipe keys' bad input. The multi-process behaviour is tests/test_fsdp_torchrun.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import REPO
from torch import nn

from harness.core import faults, sharded_checkpoint
from harness.core.activation_checkpointing import checkpoint_activations, is_checkpointed
from harness.core.fsdp import block_modules, lockstep
from harness.core.memory import bytes_saved_for_backward, format_bytes, format_report, per_rank_report, state_bytes
from harness.core.trainer import Trainer
from harness.errors import HarnessError
from harness.train import main
from models import MLP, ResidualMLP
from models.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = str(REPO / "recipes" / "mnist_mlp.yaml")


def small(seed: int = 0, dropout: float = 0.0) -> ResidualMLP:
    torch.manual_seed(seed)
    return ResidualMLP(in_features=12, width=16, depth=3, expansion=2, num_classes=3, dropout=dropout)


def toy_batches(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def test_the_blocks_to_shard_default_to_the_models_blocks_list() -> None:
    model = small()
    assert block_modules(model, None) == list(model.blocks)
    assert block_modules(model, ["ResidualBlock"]) == list(model.blocks)
    assert block_modules(model, ["LayerNorm"]) == [*(b.norm for b in model.blocks), model.norm]
    assert block_modules(MLP(), None) == []  # no blocks list: the root alone is sharded
    with pytest.raises(ValueError, match="'Block' is not a module class of ResidualMLP") as raised:
        block_modules(model, ["ResidualBlock", "Block"])
    assert "its module classes: ResidualMLP, Sequential, Flatten, Linear, ModuleList, ResidualBlock, LayerNorm, " \
           "Dropout" in str(raised.value)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps from the forward for the backward."""
    return bytes_saved_for_backward(lambda: model(x).sum())


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less() -> None:
    x, y = toy_batches(1)[0]
    x = x.repeat(16, 1)  # activations large against the weights, as in training
    y = y.repeat(16)
    plain, checkpointed = small(dropout=0.3), small(dropout=0.3)
    assert checkpoint_activations(checkpointed.blocks) == 3
    assert checkpoint_activations(checkpointed.blocks) == 0  # already done: left as it is
    assert all(is_checkpointed(b) for b in checkpointed.blocks) and not is_checkpointed(plain.blocks[0])
    # the same parameter names: checkpoints, param groups and init_from see the same model
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    for model in (plain, checkpointed):
        torch.manual_seed(5)  # the same dropout masks: the recomputation must draw them again, identically
        nn.functional.cross_entropy(model(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    kept_plain, kept_checkpointed = saved_bytes(plain, x), saved_bytes(checkpointed, x)
    assert kept_checkpointed < 0.5 * kept_plain, (kept_checkpointed, kept_plain)


def test_activation_checkpointing_of_the_gpt_gives_the_same_gradients() -> None:
    """The GPT's blocks recomputed: attention dropout (inside SDPA), residual dropout and the tied
    embedding's gradient (summed from the input side and the output head) all come out the same."""
    def gpt() -> GPT:
        torch.manual_seed(0)
        return GPT(vocab_size=20, block_size=24, n_layer=3, n_head=2, n_embd=32, dropout=0.2)

    x = torch.randint(0, 20, (6, 24), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    plain, checkpointed = gpt(), gpt()
    assert checkpoint_activations(block_modules(checkpointed, None)) == 3  # the `blocks` list, as `true` picks
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(5)  # the same dropout masks, drawn again identically by the recomputation
        nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 3 + 3 * 6  # wte, wpe, ln_f; 6 per block
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name
    x_long = x.repeat(4, 1)
    kept_plain, kept_checkpointed = saved_bytes(plain, x_long), saved_bytes(checkpointed, x_long)
    assert kept_checkpointed < 0.5 * kept_plain, (kept_checkpointed, kept_plain)


def test_byte_accounting_of_a_whole_model() -> None:
    model = small()
    weights = sum(p.numel() for p in model.parameters()) * 4  # float32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = state_bytes(model, optimizer)
    assert before["parameters"] == {"rank": weights, "unsharded": weights}
    assert before["gradients"]["rank"] == 0 and before["optimizer_state"]["rank"] == 0
    x, y = toy_batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = state_bytes(model, optimizer)
    assert after["gradients"] == {"rank": weights, "unsharded": weights}
    # AdamW: two moments the size of the weights, and one float32 step count per parameter tensor
    steps = 4 * len(list(model.parameters()))
    assert after["optimizer_state"] == {"rank": 2 * weights + steps, "unsharded": 2 * weights + steps}
    # The start-up line: one process holds the whole state (no "per rank" of a model nothing shards);
    # two ranks of half the parameters each say so against the whole.
    one = format_report(per_rank_report([after]))
    assert one == f"parameters {format_bytes(weights)}, gradients {format_bytes(weights)}, " \
                  f"optimizer state {format_bytes(2 * weights + steps)}"
    halves = [{kind: {"rank": v["unsharded"] // 2, "unsharded": v["unsharded"]} for kind, v in after.items()}] * 2
    assert format_report(per_rank_report(halves)).startswith(
        f"parameters {format_bytes(weights // 2)} per rank of {format_bytes(weights)} unsharded, ")


def test_lockstep_in_one_process_counts_every_batch_once() -> None:
    batches = toy_batches(3)
    steps = list(lockstep(batches, torch.device("cpu")))
    assert [counted for _, counted in steps] == [True, True, True]
    assert all(a is b for (a, _), b in zip(steps, batches, strict=True))
    assert list(lockstep([], torch.device("cpu"))) == []


def trainer_for(model: nn.Module) -> Trainer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return Trainer(model, optimizer, nn.CrossEntropyLoss(), device="cpu", progress=False, loggers=[],
                   scheduler=scheduler, strategy="fsdp", accumulate_grad_batches=2, grad_clip_norm=0.5)


def test_a_sharded_checkpoint_resumes_one_process_exactly(tmp_path: Path) -> None:
    data = toy_batches()
    straight = trainer_for(small(dropout=0.2))  # dropout: the RNG states must come back too
    straight.fit(data, epochs=2)

    first = trainer_for(small(dropout=0.2))
    first.fit(data, epochs=1)
    link = first.save_checkpoint(tmp_path / "last", extra={"note": "kept"})
    folder = tmp_path / os.readlink(link)
    assert link.is_symlink() and folder.name.startswith("epoch1-step3-")
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "rng-0.pt", "trainer.pt"]
    torch.randn(100)  # the global RNG moves on; the resume must put it back

    resumed = trainer_for(small(seed=1, dropout=0.2))  # other initial weights: all must come from the checkpoint
    state = resumed.load_checkpoint(link)
    assert state["extra"] == {"note": "kept"} and state["world_size"] == 1 and resumed.epoch == 1
    assert resumed.scheduler.get_last_lr() == first.scheduler.get_last_lr()
    resumed.fit(data, epochs=2)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in straight.history]

    # consolidated in one process, the checkpoint is the model's own state_dict
    whole = sharded_checkpoint.consolidate(link)
    saved = first.model.state_dict()
    assert whole.keys() == saved.keys() and all(torch.equal(whole[k], saved[k]) for k in saved)


def test_a_sharded_checkpoint_of_another_model_is_one_line(tmp_path: Path) -> None:
    trainer = trainer_for(small())
    trainer.save_checkpoint(tmp_path / "last")
    other = trainer_for(ResidualMLP(in_features=12, width=16, depth=2, expansion=2, num_classes=3))
    with pytest.raises(HarnessError, match=r"checkpoint does not fit this model: unexpected keys blocks\.2\.") as e:
        other.load_checkpoint(tmp_path / "last")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match=r"not a sharded harness checkpoint: it has no trainer\.pt"):
        other.load_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("point", faults.SHARDED_POINTS)
def test_a_save_stopped_at_any_step_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch, point: str) -> None:
    trainer = trainer_for(small())
    trainer.fit(toy_batches(), epochs=1)
    link = trainer.save_checkpoint(tmp_path / "last")
    previous = os.readlink(link)
    trainer.fit(toy_batches(), epochs=2)

    class Crash(Exception):
        pass

    def crash_at(reached: str) -> None:
        if reached == point:  # nothing after this point runs, as after a SIGKILL there
            raise Crash

    monkeypatch.setattr(faults, "reached", crash_at)
    with pytest.raises(Crash):
        trainer.save_checkpoint(link)
    monkeypatch.undo()
    expected_epoch = 2 if point == "sharded:linked" else 1  # only the last step had moved the link
    assert sharded_checkpoint.read_state(link)["epoch"] == expected_epoch
    assert (os.readlink(link) == previous) == (expected_epoch == 1)
    fresh = trainer_for(small(seed=3))
    fresh.load_checkpoint(link)  # loadable, whole
    sharded_checkpoint.remove_unreferenced(tmp_path)  # what the next run's start does
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last", os.readlink(link)])


def test_a_resume_at_another_world_size_keeps_the_global_batch(tmp_path: Path) -> None:
    from harness.recipe.resume import check_resume
    from harness.recipe.schema import Recipe

    saved = Recipe.model_validate({"data": {"batch_size": 16}})
    state = {"extra": {"recipe": saved.to_dict()}, "world_size": 2}
    for batch, world in ((32, 1), (16, 2), (8, 4)):  # 32 samples a step, as saved
        check_resume(state, Recipe.model_validate({"data": {"batch_size": batch}}), tmp_path, world_size=world)
    with pytest.raises(HarnessError) as e:
        check_resume(state, saved, tmp_path, world_size=1)
    assert str(e.value) == (f"{tmp_path}: trained with a global batch of 32 (data.batch_size=16 x 2 processes); "
                            "a resume keeps it: with 1 process set data.batch_size=32")
    with pytest.raises(HarnessError, match="3 processes cannot split it evenly"):
        check_resume(state, saved, tmp_path, world_size=3)
    with pytest.raises(HarnessError, match=r"cannot change data\.batch_size \(16 -> 8\)"):  # same world size
        check_resume(state, Recipe.model_validate({"data": {"batch_size": 8}}), tmp_path, world_size=2)


def train(*argv: str) -> int:
    return main([RECIPE, *argv])


def one_error_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def args(fake_data, tmp_path: Path) -> list[str]:
    return [f"data.root={fake_data.root}", "model.name=residual_mlp", "model.args={width: 16, depth: 2, expansion: 2}",
            "data.batch_size=8", "data.val_size=8", "trainer.epochs=1", "scheduler.name=none", "trainer.progress=false",
            "trainer.device=cpu", "logging.tensorboard=false", f"logging.root={tmp_path / 'runs'}"]


def test_class_names_the_model_does_not_have_are_one_line(args, tmp_path: Path, capsys) -> None:
    line = one_error_line(capsys, train(*args, "trainer.strategy=fsdp", "trainer.fsdp.shard=[Block]"))
    assert line == ("error: trainer.fsdp.shard: 'Block' is not a module class of ResidualMLP; its module classes: "
                    "ResidualMLP, Sequential, Flatten, Linear, ModuleList, ResidualBlock, LayerNorm, Dropout")
    line = one_error_line(capsys, train(*args, "trainer.activation_checkpointing=[Blok]"))
    assert line.startswith("error: trainer.activation_checkpointing: 'Blok' is not a module class of ResidualMLP")
    line = one_error_line(capsys, train(*args, "model.name=mlp", "model.args={}",
                                        "trainer.activation_checkpointing=true"))
    assert "MLP has no `blocks` list" in line and "its module classes: MLP, Sequential, Flatten, Linear, ReLU" in line
    line = one_error_line(capsys, train(*args, "model.name=cnn", "model.args={}",
                                        "trainer.activation_checkpointing=[Sequential]"))
    assert "Sequential holds BatchNorm2d, whose running statistics would be updated twice" in line
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_commands_take_a_sharded_checkpoint_where_a_file_goes(args, tmp_path: Path, capsys) -> None:
    from harness.evaluate import main as evaluate_main
    from harness.recipe.schema import load_recipe
    from harness.recipe.weights import load_checkpoint_model
    from harness.workflows.export import export

    assert train(*args, "trainer.strategy=fsdp") == 0
    [run] = (tmp_path / "runs").glob("*/*")
    best = run / "checkpoints" / "best"
    recipe = load_recipe(run / "config.yaml")
    model, state, weights = load_checkpoint_model(recipe, best)
    whole = sharded_checkpoint.consolidate(best)
    assert state["epoch"] == 1 and weights.startswith("raw model weights")
    assert all(torch.equal(v, whole[k]) for k, v in model.state_dict().items())

    # init_from a sharded folder: a new, unsharded run starts from its weights
    assert train(*args, f"model.init_from={best}", f"logging.root={tmp_path / 'tuned'}") == 0
    assert f"initialised {len(whole)} of {len(whole)} tensors from {best}" in capsys.readouterr().out

    # export consolidates it too; the state_dict written is the checkpoint's model
    out = export(recipe, best, "state_dict", tmp_path / "model.pt", verbose=False)
    exported = torch.load(out["output"], weights_only=True)
    assert all(torch.equal(v, whole[k]) for k, v in exported.items())

    # a recipe whose model differs: one line, exit 2
    capsys.readouterr()
    code = evaluate_main([str(run / "config.yaml"), "--checkpoint", str(best), "model.args.depth=3"])
    line = one_error_line(capsys, code)
    assert f"{best}: checkpoint does not fit this model: missing keys blocks.2." in line


def test_the_readme_shows_the_sbatch_script_as_it_is() -> None:
    import re

    def code(text: str) -> list[str]:  # the lines that run: #SBATCH directives yes, comments no
        return [line.rstrip() for line in text.splitlines()
                if line.strip() and (not line.lstrip().startswith("#") or line.startswith(("#SBATCH", "#!")))]

    readme = (REPO / "README.md").read_text()
    [shown] = [b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if b.startswith("#!/bin/bash")]
    script = (REPO / "scripts" / "train_multinode.sbatch").read_text()
    assert code(shown) == code(script)
