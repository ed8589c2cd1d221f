"""Weights from files: `model.init_from` for a new run, and a checkpoint's weights for scoring one.

`init_model` loads a pretrained file into a freshly built model (renamed, skipped, strict or not);
`load_checkpoint_model` gives the recipe's model with a checkpoint's weights, raw or EMA as the recipe
says (`choose_weights`), for every command that scores or exports a checkpoint; `check_same_data`
refuses a recipe whose data differs from the one the checkpoint was trained on, and `check_vocabulary`
text whose token ids would mean other characters or words than the checkpoint's.

A sharded checkpoint (a folder that `trainer.strategy: fsdp` writes) is accepted wherever a checkpoint
file is: its model is consolidated into whole tensors in this process, whatever world size wrote it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core import sharded_checkpoint
from harness.core.checkpoint import FORMAT, check_model_state, load_file
from harness.data.text_chars import TEXT_CHARS
from harness.errors import HarnessError
from harness.recipe.build import build_model
from harness.recipe.schema import ModelConfig, Recipe


def matches_prefix(name: str, prefix: str) -> bool:
    """Whether dotted `name` lies under `prefix`: `features` matches `features.0.weight` and
    `features` itself, not `features_extra.weight`; "" matches everything."""
    prefix = prefix.rstrip(".")
    return not prefix or name == prefix or name.startswith(prefix + ".")


def init_model(model: nn.Module, cfg: ModelConfig) -> str | None:
    """Load `model.init_from` into a freshly built `model`; returns a line saying what was loaded.

    The file is a harness checkpoint (its raw model weights) or a plain state_dict. Its keys are
    renamed by `model.init_map`; model weights under a `model.init_skip` prefix keep their built
    values. A shape mismatch is always an error; with `model.init_strict` so are model weights the
    file lacks and file weights the model lacks. None (nothing done) without `init_from`.
    """
    if cfg.init_from is None:
        return None
    path = _init_path(cfg.init_from)
    where = f"model.init_from {path}"
    renamed = _rename_keys(_read_weights(path), cfg.init_map, where)
    own = model.state_dict()
    for prefix in cfg.init_skip:
        if not any(matches_prefix(k, prefix) for k in (*own, *renamed)):
            raise HarnessError(f"model.init_skip: {prefix!r} matches no weight of the model or of {path}")

    def skipped(key: str) -> bool:
        return any(matches_prefix(key, prefix) for prefix in cfg.init_skip)

    load = {k: v for k, v in renamed.items() if k in own and not skipped(k)}
    wrong = [k for k in load if load[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        module = k.rpartition(".")[0] or k
        raise HarnessError(f"{where}: {k} is {tuple(load[k].shape)} in the file but {tuple(own[k].shape)} in the "
                           f"model ({len(wrong)} such tensor{'s' * (len(wrong) > 1)}); to train a new layer there "
                           f"instead, skip it: model.init_skip=[{module}]")
    missing = [k for k in own if k not in load and not skipped(k)]
    unexpected = [k for k in renamed if k not in own and not skipped(k)]
    if cfg.init_strict and (missing or unexpected):
        parts = [f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' * (len(keys) > 3)})"
                 for label, keys in (("the file lacks", missing), ("the model lacks", unexpected)) if keys]
        raise HarnessError(f"{where}: {'; '.join(parts)}; rename with model.init_map, skip with "
                           "model.init_skip, or load what matches with model.init_strict=false")
    if not load:
        raise HarnessError(f"{where}: no weight of the file matches the model (first keys: {list(renamed)[:3]})")
    model.load_state_dict(load, strict=False)
    kept = len(own) - len(load)
    return f"initialised {len(load)} of {len(own)} tensors from {path}" + (f"; {kept} as built" if kept else "")


def _init_path(pattern: str) -> Path:
    """`model.init_from` as a path; a glob (`runs/pretrain/*/checkpoints/best.pt`) picks the newest match."""
    if not any(c in pattern for c in "*?["):
        return Path(pattern)
    matches = glob.glob(os.path.expanduser(pattern))
    if not matches:
        raise HarnessError(f"model.init_from: no file matches {pattern}")
    return Path(max(matches, key=os.path.getmtime))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if sharded_checkpoint.is_sharded_checkpoint(path):
        sharded_checkpoint.read_state(path)  # a folder that is no sharded checkpoint: one line
        return sharded_checkpoint.consolidate(path)
    if not path.is_file():
        raise HarnessError(f"model.init_from: file not found: {path}")
    state = load_file(path, f"model.init_from {path}")
    if isinstance(state, dict) and state.get("format") == FORMAT:  # a harness checkpoint
        state = state.get("model")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HarnessError(f"model.init_from {path}: neither a harness checkpoint nor a state_dict "
                           "(a dict of tensors)")
    return state


def _rename_keys(weights: dict[str, torch.Tensor], mapping: dict[str, str], where: str) -> dict[str, torch.Tensor]:
    """Apply `model.init_map`: the longest matching old prefix of each key is replaced by its new one."""
    for old in mapping:
        if not any(matches_prefix(k, old) for k in weights):
            raise HarnessError(f"model.init_map: {old!r} matches no weight in {where.split(' ', 1)[1]} "
                               f"(first keys: {list(weights)[:3]})")
    renamed = {}
    for key, value in weights.items():
        old = max((o for o in mapping if matches_prefix(key, o)), key=len, default=None)
        if old is not None:
            rest = key[len(old.rstrip(".")):].lstrip(".")
            key = ".".join(part for part in (mapping[old].strip("."), rest) if part)
        renamed[key] = value
    return renamed


def load_checkpoint_model(recipe: Recipe, checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any], str]:
    """The recipe's model with the checkpoint's weights (EMA when the recipe has trainer.ema), in eval
    mode on the CPU; the checkpoint's state; and words saying which weights were loaded. A missing,
    corrupt or foreign checkpoint raises HarnessError. A sharded checkpoint's model is consolidated
    (its state then holds the whole tensors as "model"). A text model's embedding is sized from the
    vocabulary the checkpoint keeps, as training sized it from the data's."""
    state = sharded_checkpoint.read_checkpoint_state(checkpoint)
    vocabulary = saved_vocabulary(state)
    model = build_model(recipe.model, vocab_size=None if vocabulary is None else len(vocabulary))
    if sharded_checkpoint.is_sharded_checkpoint(checkpoint):
        sharded_checkpoint.check_model(model, checkpoint)  # names and shapes, before reading any tensor
        state = {**state, "model": sharded_checkpoint.consolidate(checkpoint)}
    weights, note = choose_weights(state, recipe, Path(checkpoint))
    check_model_state(model, weights, str(checkpoint))
    model.load_state_dict(weights)
    return model.eval(), state, note


def choose_weights(state: dict[str, Any], recipe: Recipe, path: Path) -> tuple[dict[str, Any], str]:
    """The raw model weights, or the EMA shadow when the recipe has trainer.ema; and words saying which."""
    ema = next((s for key, s in state.get("callbacks", {}).items() if key.endswith(":EMA")), None)
    shadow = ema.get("shadow") if ema else None
    if recipe.trainer.ema is None:
        hint = f"; the checkpoint also holds EMA weights: add trainer.ema.decay={ema['decay']} to score those" \
            if shadow is not None else ""
        return state["model"], f"raw model weights{hint}"
    if shadow is None:
        raise HarnessError(f"{path}: the recipe has trainer.ema but the checkpoint holds no EMA weights; "
                           "add trainer.ema=null to score the raw weights")
    return shadow, f"EMA weights (decay {ema['decay']})"


def check_same_data(state: dict[str, Any], recipe: Recipe, split: str, path: Path) -> None:
    """Refuse a dataset other than the checkpoint's, and a val split that would hold its training images."""
    saved = state.get("extra", {}).get("recipe")
    if saved is None:  # saved from Python without a recipe: nothing to compare
        return
    if saved["data"]["name"] != recipe.data.name:
        raise HarnessError(f"{path}: trained on data.name={saved['data']['name']!r}, "
                           f"but the recipe says data.name={recipe.data.name!r}")
    # The same classes in the same order: class i of the model must be class i of the data, or every
    # figure is computed against the wrong labels.
    was_classes, now_classes = _as_override(saved["data"].get("classes")), _as_override(recipe.data.classes)
    if was_classes != now_classes:
        raise HarnessError(f"{path}: trained with data.classes={was_classes}, but the recipe says "
                           f"data.classes={now_classes}; score it with data.classes={was_classes}")
    was = (saved["data"]["val_size"], saved["trainer"]["seed"])
    now = (recipe.data.val_size, recipe.trainer.seed)
    if split == "val" and was != now and recipe.data.name != TEXT_CHARS:  # text_chars: a fixed 90/10 split
        raise HarnessError(
            f"--split val: {path} was trained holding out data.val_size={was[0]} with trainer.seed={was[1]}, "
            f"the recipe holds out data.val_size={now[0]} with trainer.seed={now[1]}: that val split would hold "
            f"training images; add data.val_size={was[0]} trainer.seed={was[1]}"
        )


def saved_vocabulary(state: dict[str, Any]) -> str | list[str] | None:
    """What a checkpoint's token ids mean, id i is vocabulary[i] (`harness.recipe.data.Data.vocabulary`:
    text_chars' characters as one string, text_lines' words as a list); None for a model of other data."""
    return state.get("extra", {}).get("vocabulary")


def check_vocabulary(state: dict[str, Any], vocabulary: str | list[str] | None, path: Path | str) -> None:
    """Refuse data whose vocabulary differs from the one a text model was trained with: id i would mean
    another character (text_chars: another text) or another word (text_lines: another file, encoding,
    min_freq, or other training sentences, which data.val_size and trainer.seed choose).

    Nothing to compare when neither has one (not text), or when the checkpoint has none (saved from
    Python without it); a checkpoint with a vocabulary and data without one is refused."""
    saved = saved_vocabulary(state)
    if saved is None or saved == vocabulary:
        return
    if vocabulary is None:
        raise HarnessError(f"{path}: the model was trained on token ids of a vocabulary of {len(saved)}, the "
                           "recipe's data has none: score it with the text recipe it was trained with")
    unit = "characters" if isinstance(saved, str) else "words"
    differ = sorted(set(saved) ^ set(vocabulary))
    if differ:
        shown = repr("".join(differ)[:20]) if isinstance(saved, str) else ", ".join(map(repr, differ[:5]))
        how = f"{unit} in one but not the other: {shown}{', ...' if len(differ) > 5 and unit == 'words' else ''}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(saved, vocabulary, strict=True)) if a != b)
        how = f"the same {unit} in another order: id {first} is {saved[first]!r} there and {vocabulary[first]!r} here"
    fix = "use the text (data.path, data.encoding) it was trained on" if isinstance(saved, str) else \
        "score it with the recipe it was trained with (the same data.files, encoding, min_freq, val_size and " \
        "trainer.seed)"
    raise HarnessError(f"{path}: vocabulary mismatch: the model was trained with a vocabulary of {len(saved)} "
                       f"{unit}, the data has {len(vocabulary)} ({how}); {fix}")


def _as_override(value: Any) -> str:
    """A recipe value as it is written on the command line: `null`, `[3,5]`."""
    return "null" if value is None else str(value).replace(" ", "")
