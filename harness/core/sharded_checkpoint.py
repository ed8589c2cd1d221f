"""Sharded checkpoints: `torch.distributed.checkpoint` (DCP) folders that each rank writes its own slice
into, written so that a kill at any instant leaves the previous checkpoint loadable, and read back at
any world size (DCP reshards on load: saved by 2 ranks, loaded by 1 or by 3).

    checkpoints/last -> epoch3-step120-1a2b3c4d5e6f     symbolic links, each swapped in one atomic rename
    checkpoints/best -> epoch3-step120-1a2b3c4d5e6f     (best and last share a folder when they agree)
    checkpoints/epoch3-step120-1a2b3c4d5e6f/
        .metadata, __0_0.distcp, __1_0.distcp           model and optimizer: one file per rank (DCP)
        rng-0.pt, rng-1.pt                              each rank's RNG states
        trainer.pt                                      the rest: epoch, schedule, history, callbacks,
                                                        data order, the recipe; written last

A save writes everything into `.<version>.tmp/`, renames that to `<version>/` and then points the link at
it (a new link renamed over the old one). Until that last rename the link points at the previous
folder, which no step of a save touches; folders no link points to are removed afterwards (or, after a
kill, when the next run starts). Every rank must be able to write to the folder: on several machines,
a file system they share.

File I/O and DCP calls only: what goes into `trainer.pt` is the Trainer's business. DCP is imported by
the functions that use it: it takes longer to import than the rest of the harness, and a run without
sharded checkpoints never needs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from harness.core import faults
from harness.core.checkpoint import atomic_save, check_model_shapes, load_file, read_checkpoint
from harness.errors import HarnessError

FORMAT = "harness-sharded-checkpoint-v1"
TRAINER_FILE = "trainer.pt"
# a version folder, and the temporary folder it is written in
_VERSION = re.compile(r"^epoch\d+-step\d+-[0-9a-f]{12}$")
_TEMPORARY = re.compile(r"^\.epoch\d+-step\d+-[0-9a-f]{12}\.tmp$")


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A folder (or a link to one) is read as a sharded checkpoint; anything else as a checkpoint file."""
    return Path(path).is_dir()


def _group() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _single_process_is_meant() -> Iterator[None]:
    """DCP warns on every save and load without a process group, even when asked to work without one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _dcp() -> Any:
    """torch.distributed.checkpoint, with its state_dict helpers, imported on first use."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415 (slow import: see the module's docstring)
    import torch.distributed.checkpoint.state_dict  # noqa: PLC0415, F401 (dcp.state_dict)

    return dcp


def _tensor_items(metadata: Any) -> dict[str, Any]:
    """The model's tensors in DCP metadata: {name without "model.": its storage metadata (size, dtype)}."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata  # noqa: PLC0415 (slow import)

    return {name.removeprefix("model."): item for name, item in metadata.state_dict_metadata.items()
            if name.startswith("model.") and isinstance(item, TensorStorageMetadata)}


def _barrier() -> None:
    if _group()[1] > 1:
        dist.barrier()


def save(link: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
         rng: dict[str, Any]) -> Path:
    """Write a sharded checkpoint and point `link` at it; every rank calls this with its own `rng`.

    `state` (rank 0's is written) holds everything but the model and the optimizer, and must have
    `epoch` and `global_step` (they name the folder). Returns the folder written."""
    link = Path(link)
    rank, world = _group()
    version = f"epoch{int(state['epoch'])}-step{int(state['global_step'])}-{secrets.token_hex(6)}"
    if world > 1:  # one name for all ranks: rank 0's
        box = [version]
        dist.broadcast_object_list(box, src=0)
        version = box[0]
    temporary, folder = link.parent / f".{version}.tmp", link.parent / version
    if rank == 0:
        temporary.mkdir(parents=True)
    _barrier()
    dcp = _dcp()
    tensors: dict[str, Any] = {"model": dcp.state_dict.get_model_state_dict(model)} if optimizer is None else \
        dict(zip(("model", "optimizer"), dcp.state_dict.get_state_dict(model, optimizer), strict=True))
    with _single_process_is_meant():
        dcp.save(tensors, checkpoint_id=temporary, no_dist=world == 1)
    atomic_save(rng, temporary / f"rng-{rank}.pt")
    faults.reached("sharded:shards-written")
    _barrier()  # every rank's slice is on disk
    if rank == 0:
        atomic_save({**state, "format": FORMAT, "world_size": world}, temporary / TRAINER_FILE)
        _fsync(temporary)
        os.replace(temporary, folder)
        _fsync(link.parent)
        faults.reached("sharded:renamed")
        _point(link, folder.name)
        faults.reached("sharded:linked")
        remove_unreferenced(link.parent)
    _barrier()  # no rank goes on (and reads it) before the link is in place
    return folder


def copy(source: str | Path, destination: str | Path) -> None:
    """Make `destination` the same checkpoint as `source` (rank 0 repoints the link; no data is copied)."""
    source, destination = Path(source), Path(destination)
    if _group()[0] == 0:
        _point(destination, os.readlink(source) if source.is_symlink() else source.name)
        remove_unreferenced(destination.parent)
    _barrier()


def _point(link: Path, target: str) -> None:
    """Point `link` at `target` (a name in the same folder) in one atomic rename of a new link over it."""
    temporary = link.parent / f".{link.name}.{secrets.token_hex(6)}.link"
    os.symlink(target, temporary)
    os.replace(temporary, link)
    _fsync(link.parent)


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unreferenced(folder: str | Path) -> None:
    """Remove what a save leaves behind in a checkpoints folder: version folders no link points to, and the
    temporary folders and links of a save that was killed. Called by rank 0 only."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    kept = {os.readlink(p) for p in entries if p.is_symlink()}
    for path in entries:
        if path.is_symlink():
            if path.name.endswith(".link") and path.name.startswith("."):
                path.unlink(missing_ok=True)
        elif path.is_dir() and (_TEMPORARY.match(path.name) or (_VERSION.match(path.name) and path.name not in kept)):
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: str | Path) -> dict[str, Any]:
    """`trainer.pt` of a sharded checkpoint (everything but the model and optimizer tensors), checked."""
    path = Path(path)
    if not path.is_dir():
        raise HarnessError(f"checkpoint not found: {path}")
    trainer_file = path / TRAINER_FILE
    if not trainer_file.is_file():
        raise HarnessError(f"{path}: a folder, but not a sharded harness checkpoint: it has no {TRAINER_FILE} "
                           "(a sharded checkpoint holds trainer.pt, .metadata and .distcp files)")
    state = load_file(trainer_file, str(path), " as a sharded checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise HarnessError(f"{path}: {TRAINER_FILE} is not a harness sharded checkpoint's")
    return state


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The state of either kind of checkpoint: a `.pt` file whole (`read_checkpoint`), or a sharded
    folder's `trainer.pt` (no model or optimizer tensors: `load` reads those into a model)."""
    return read_state(path) if is_sharded_checkpoint(path) else read_checkpoint(path)


def saved_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The model tensors a sharded checkpoint holds: {name: whole shape}, from DCP's metadata."""
    try:
        metadata = _dcp().FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # missing or corrupt .metadata
        raise HarnessError(f"{path}: the sharded checkpoint's .metadata cannot be read ({e})") from None
    return {name: tuple(item.size) for name, item in _tensor_items(metadata).items()}


def check_model(model: nn.Module, path: str | Path) -> None:
    """One HarnessError line naming the tensors and shapes that differ between `model` (sharded or not:
    whole shapes are compared) and the sharded checkpoint at `path`."""
    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_model_shapes(own, saved_shapes(path), str(path))


def load(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Read the model's (and the optimizer's) tensors into `model` and `optimizer`, resharded to this run's
    ranks. Every rank calls this. The model's names and shapes must match (`check_model` first)."""
    folder = Path(path).resolve()  # the version folder, whatever happens to the link meanwhile
    world = _group()[1]
    dcp = _dcp()
    if optimizer is None:
        tensors: dict[str, Any] = {"model": dcp.state_dict.get_model_state_dict(model)}
    else:  # a fresh optimizer gets its state tensors here (a zero-lr step), for DCP to fill in
        tensors = dict(zip(("model", "optimizer"), dcp.state_dict.get_state_dict(model, optimizer), strict=True))
    try:
        with _single_process_is_meant():
            dcp.load(tensors, checkpoint_id=folder, no_dist=world == 1)
    except Exception as e:  # DCP raises one exception per rank, wrapped; its first line says what is missing
        what = "optimizer state" if optimizer is not None else "model"
        raise HarnessError(f"{path}: the {what} cannot be loaded from this sharded checkpoint "
                           f"({str(e).strip().splitlines()[0][:300]})") from None
    if optimizer is None:
        dcp.state_dict.set_model_state_dict(model, tensors["model"])
    else:
        dcp.state_dict.set_state_dict(model, optimizer, model_state_dict=tensors["model"],
                                      optim_state_dict=tensors["optimizer"])


def consolidate(path: str | Path) -> dict[str, torch.Tensor]:
    """The model's whole tensors from a sharded checkpoint, in this process alone (no process group, no
    model needed): a plain state_dict on the CPU, whatever world size wrote it."""
    folder = Path(path).resolve()
    dcp = _dcp()
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    tensors = {name: torch.empty(item.size, dtype=item.properties.dtype)
               for name, item in _tensor_items(metadata).items()}
    with _single_process_is_meant():
        dcp.load({"model": tensors}, checkpoint_id=folder, no_dist=True)
    return tensors


def read_rng(path: str | Path, rank: int) -> dict[str, Any] | None:
    """The RNG states rank `rank` saved, or None when the checkpoint was written by fewer ranks."""
    file = Path(path) / f"rng-{rank}.pt"
    return load_file(file, str(file)) if file.is_file() else None
