"""Recipes: a YAML file plus `key=value` overrides, validated against one typed schema.

Every default lives in the classes below and nowhere else. An unknown key, a wrong type or a bad
choice raises `HarnessError` with one line naming the file, the key and what is allowed, before
any work starts. Overrides go through exactly the same validation as the file.
"""

from __future__ import annotations

import codecs
import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.core.callbacks import DEFAULT_MODE, DEFAULT_MONITOR
from harness.data.bundled import BUNDLED  # scikit-learn's bundled sets: sklearn:breast_cancer, sklearn:digits
from harness.data.datasets import DATASETS  # the registry is the one list of built-in data set names
from harness.data.text_chars import TEXT_CHARS  # a character-level text file
from harness.data.text_lines import TEXT_LINES  # sentences from one file per class
from harness.errors import HarnessError


class Section(BaseModel):
    # extra="forbid" turns a misspelled key into an error instead of a silently ignored default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = "cnn"  # a name from models.MODELS, or an import path "package.module:Class"
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments for the class
    # Transfer learning. A prefix names a module by its dotted path: `features` matches
    # `features.0.weight`, not `features_extra.weight`.
    init_from: str | None = None  # harness checkpoint or state_dict file: weights loaded before training
    init_strict: bool = True  # every weight of the model and of the file must be used (skipped ones aside)
    init_map: dict[str, str] = Field(default_factory=dict)  # rename the file's keys: {old_prefix: new_prefix}
    init_skip: list[str] = Field(default_factory=list)  # prefixes (model names) left as built, e.g. a new head
    freeze: list[str] = Field(default_factory=list)  # prefixes of parameters that are not trained


class RandomCropConfig(Section):
    size: int = Field(gt=0)  # output height = width, pixels
    padding: int = Field(0, ge=0)  # zero pixels added on every side before cropping


class AugmentConfig(Section):
    """Training-only augmentation; the tensor path applies it to whole batches on the device."""

    random_crop: RandomCropConfig | None = None
    horizontal_flip: float = Field(0.0, ge=0, le=1)  # probability that an image is mirrored


class DataConfig(Section):
    # mnist | fashion_mnist | cifar10 | sklearn:breast_cancer | sklearn:digits | image_folder | text_chars
    # | text_lines
    # | import:package.module:function
    name: str = "mnist"
    root: str | None = None  # None: $HARNESS_DATA_DIR, else ./data (image_folder: holds train/, test/, val/)
    download: bool = True  # try to download when the files are missing
    batch_size: int = Field(128, gt=0)  # samples per training step (per process under torchrun)
    eval_batch_size: int = Field(1000, gt=0)  # samples per validation / test batch
    val_size: int = Field(5000, ge=0)  # images held out of the training split for validation
    classes: list[int] | None = None  # keep only these classes, relabelled 0..k-1 in this order
    train_size: int | None = Field(None, gt=0)  # seeded random subset of the training images left after val
    augment: AugmentConfig | None = None  # training batches only; never validation or test
    image_size: int = Field(32, gt=0)  # image_folder: images are resized to image_size x image_size
    mean: list[float] | None = None  # per channel, [0, 1] scale; None: the dataset's (image_folder: ImageNet's)
    std: list[float] | None = None
    num_workers: int | None = Field(None, ge=0)  # DataLoader path; None: min(4, CPUs)
    pin_memory: bool | None = None  # DataLoader path; None: when the run trains on CUDA
    persistent_workers: bool | None = None  # DataLoader path; None: when num_workers > 0
    encoding: str = "utf-8"  # text_chars, text_lines: the text's encoding, a Python codec name (MR: latin-1)
    # text_chars: a character-level text file, split as nanoGPT does (first 90 % train, last 10 % validate)
    path: str | None = None  # text_chars: the text file; a relative path lies under the data root
    block_size: int | None = Field(None, gt=0)  # text_chars: characters per window (the model's context)
    # text_lines: one file per class, one sample per line; class i is the i-th entry. Relative paths lie
    # under the data root, e.g. {neg: rt-polaritydata/rt-polarity.neg, pos: rt-polaritydata/rt-polarity.pos}
    files: dict[str, str] | None = None
    min_freq: int = Field(1, gt=0)  # text_lines: a word seen fewer times in the training split is <unk>

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        choices = [*DATASETS, *BUNDLED, "image_folder", TEXT_CHARS, TEXT_LINES]
        module, _, function = name.removeprefix("import:").partition(":")
        if name in choices or (name.startswith("import:") and module and function):
            return name
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(choices)}, "
                         "or import:package.module:function")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}: give a Python codec name, e.g. utf-8, latin-1, "
                             "cp1252") from None
        return encoding

    @model_validator(mode="after")
    def _mean_with_std(self) -> DataConfig:
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std or ())):
            raise ValueError("data.mean and data.std go together, one value per channel each")
        return self

    @model_validator(mode="after")
    def _text_chars_keys(self) -> DataConfig:
        if self.name != TEXT_CHARS:
            if self.block_size is not None:
                raise ValueError(f"data.block_size is for data.name={TEXT_CHARS}, not {self.name}")
            return self
        if self.path is None or self.block_size is None:
            raise ValueError(f"data.name={TEXT_CHARS} needs data.path (the text file) and data.block_size")
        # The split is nanoGPT's fixed 90/10 and the inputs are characters: these keys would change nothing.
        # (Compared with the defaults, not "was it set": a run's config.yaml writes every key.)
        defaults = DataConfig.model_fields
        unused = [key for key in ("val_size", "classes", "train_size", "augment", "mean", "std")
                  if getattr(self, key) != defaults[key].default]
        if unused:
            raise ValueError(f"data.{unused[0]} does not apply to {TEXT_CHARS} (its split is the first 90 % of the "
                             "text for training, the last 10 % for validation)")
        return self

    @model_validator(mode="after")
    def _text_lines_keys(self) -> DataConfig:
        if self.name != TEXT_LINES:
            if self.files is not None:
                raise ValueError(f"data.files is read by data.name={TEXT_LINES} only; remove it")
            if self.min_freq != DataConfig.model_fields["min_freq"].default:  # config.yaml writes every key
                raise ValueError(f"data.min_freq is read by data.name={TEXT_LINES} only; remove it")
            return self
        if self.files is None or len(self.files) < 2:
            raise ValueError(f"data.files: {TEXT_LINES} reads one file per class, at least two: give "
                             "{class name: path}, e.g. {neg: rt-polaritydata/rt-polarity.neg, "
                             f"pos: rt-polaritydata/rt-polarity.pos}}; got {self.files}")
        empty = [label for label, path in self.files.items() if not label or not path]
        if empty:
            raise ValueError(f"data.files: every class needs a name and a path; got {self.files}")
        not_sentences = {"classes": "list only the class files you want in data.files",
                         "augment": "it crops and flips images", "mean": "it normalises images",
                         "path": f"the one text file of {TEXT_CHARS}; the class files are data.files"}
        for key, why in not_sentences.items():
            if getattr(self, key) is not None:
                raise ValueError(f"data.{key} does not apply to {TEXT_LINES} ({why}); remove it")
        return self


class ParamGroupConfig(Section):
    prefix: str  # dotted module path, e.g. features; the first matching group wins
    lr: float | None = Field(None, gt=0)  # None: optim.lr
    weight_decay: float | None = Field(None, ge=0)  # None: optim.weight_decay


class OptimConfig(Section):
    # Any torch.optim class by name in any case (sgd, adam, adamw, adadelta, rmsprop, nadam, ...), or an
    # import path "package.module:Class" to an optimizer of your own.
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0)  # every optimizer
    weight_decay: float = Field(0.0, ge=0)  # every optimizer that takes it (0: not passed to one that does not)
    momentum: float = Field(0.9, ge=0)  # SGD only (others: optim.args.momentum)
    nesterov: bool = False  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # Adam / AdamW only (others: optim.args.betas)
    args: dict[str, Any] = Field(default_factory=dict)  # the class's other keyword arguments, e.g. {rho: 0.95}
    # false: weight decay only on parameters of 2 or more dimensions (matmul weights, embeddings), none on
    # biases and normalisation gains, as nanoGPT and most transformer recipes do
    weight_decay_1d: bool = True
    # Parameters under a group's prefix train with its settings; the rest with lr / weight_decay above.
    param_groups: list[ParamGroupConfig] = Field(default_factory=list)


class LossConfig(Section):
    # Any torch.nn loss class by name, in any case, with or without "Loss" and underscores (cross_entropy,
    # nll, mse, l1, smooth_l1, bce_with_logits, HuberLoss, ...), or an import path "package.module:Class".
    name: str = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # CrossEntropyLoss only
    args: dict[str, Any] = Field(default_factory=dict)  # the class's keyword arguments, e.g. {delta: 0.5}


class MetricConfig(Section):
    type: Literal["accuracy", "precision", "recall", "f1", "confusion_matrix", "auroc", "average_precision",
                  "calibration_error", "brier", "perplexity", "bits_per_token", "token_accuracy"]
    # precision/recall/f1; auroc/average_precision take macro | weighted | none
    average: Literal["micro", "macro", "weighted", "none", "binary"] = "macro"
    top_k: int = Field(1, gt=0)  # accuracy only
    thresholds: int | None = Field(None, ge=2)  # auroc/average_precision: None exact, N binned on N thresholds
    n_bins: int = Field(15, gt=0)  # calibration_error: equal-width confidence bins
    norm: Literal["l1", "l2", "max"] = "l1"  # calibration_error: l1 = ECE, max = MCE
    ignore_index: int = -100  # perplexity / bits_per_token / token_accuracy: targets with this id are padding


class EarlyStoppingConfig(Section):
    monitor: str | None = None  # None: trainer.monitor
    mode: Literal["min", "max"] | None = None  # None: trainer.mode
    patience: int = Field(3, gt=0)  # epochs without improvement before stopping
    min_delta: float = Field(0.0, ge=0)  # smaller changes do not count as improvement


class EMAConfig(Section):
    decay: float = Field(0.999, gt=0, lt=1)  # per optimizer step


class FSDPConfig(Section):
    # Class names of the modules sharded one by one before the root (e.g. [Block]); None: the model's
    # `blocks` list when it has one, else the root alone.
    shard: list[str] | None = None
    # Free a block's gathered parameters after its forward, gather them again for its backward: less
    # memory, one more all-gather per block and step.
    reshard_after_forward: bool = True


class TrainerConfig(Section):
    epochs: int = Field(5, gt=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    deterministic: bool = False  # deterministic kernels (may be slower on CUDA)
    precision: Literal["32", "bf16", "16"] = "32"  # 16 needs CUDA; bf16 autocasts on CPU and CUDA
    compile: bool = False  # torch.compile the model
    sync_batchnorm: bool = False  # torchrun on CUDA: BatchNorm statistics over all ranks' batches
    channels_last: bool = False  # NHWC memory format for conv nets (faster with bf16 on GPUs)
    accumulate_grad_batches: int = Field(1, gt=0)  # optimizer step every N batches
    grad_clip_norm: float | None = Field(None, gt=0)  # clip total gradient norm to this
    grad_clip_value: float | None = Field(None, gt=0)  # clip each gradient element to +-this
    on_nonfinite: Literal["halt", "skip"] = "halt"  # NaN/inf loss: stop, or drop the step (one sync/step)
    max_nonfinite_skips: int = Field(10, gt=0)  # with skip: halt after this many in a row
    monitor: str = DEFAULT_MONITOR  # the metric that picks best.pt (and early stopping's, unless it names its own)
    mode: Literal["min", "max"] = DEFAULT_MODE
    early_stopping: EarlyStoppingConfig | None = None
    ema: EMAConfig | None = None  # validate and checkpoint an exponential moving average of the weights
    fast_dev_run: bool = False  # one batch of train, val and test; no files written
    overfit_batches: int = Field(0, ge=0)  # train and validate on the same first N training batches
    limit_train_batches: int | None = Field(None, gt=0)  # batches per training epoch
    limit_val_batches: int | None = Field(None, gt=0)  # batches per validation pass
    limit_test_batches: int | None = Field(None, gt=0)  # batches of the final test (None: the whole test split)
    log_every_n_steps: int = Field(50, gt=0)  # progress-bar refresh: the only host sync in a step
    progress: bool = True  # tqdm bar on a terminal; one line per epoch otherwise
    threads: int | None = Field(None, gt=0)  # torch.set_num_threads before anything runs; None: torch's choice
    # Step-based training, as language models train: max_steps optimizer steps instead of trainer.epochs,
    # validating every val_every_n_steps (None: at the end only) on limit_val_batches batches.
    max_steps: int | None = Field(None, gt=0)
    val_every_n_steps: int | None = Field(None, gt=0)
    # log tokens/s, FLOPs per step, achieved FLOP/s (and MFU on a GPU of known peak), peak memory each validation
    throughput: bool = False
    # How torchrun's processes share the work. auto / ddp: each holds the whole model (DDP); fsdp: each
    # holds a slice of the parameters, gradients and optimizer state, and checkpoints are sharded folders.
    # One process trains the whole model whatever this says.
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig)
    # Recompute these modules' activations in the backward pass instead of keeping them: class names, or
    # true for the blocks trainer.fsdp.shard names (default: the model's `blocks`). Any strategy.
    activation_checkpointing: bool | list[str] = False

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainerConfig:
        if self.max_steps is None:
            if self.val_every_n_steps is not None:
                raise ValueError("trainer.val_every_n_steps needs trainer.max_steps (epochs validate every epoch)")
            return self
        for key in ("epochs", "limit_train_batches", "overfit_batches"):  # against the defaults, as above
            if getattr(self, key) != TrainerConfig.model_fields[key].default:
                raise ValueError(f"trainer.{key} counts epochs; with trainer.max_steps training runs that many steps")
        return self

    @model_validator(mode="after")
    def _fsdp_combinations(self) -> TrainerConfig:
        if self.strategy != "fsdp":
            return self
        if self.precision == "16":
            raise ValueError("trainer.precision=16 with trainer.strategy=fsdp: fp16 loss scaling would need "
                             "every rank to agree on skipped steps; use precision bf16")
        if self.ema is not None:
            raise ValueError("trainer.ema with trainer.strategy=fsdp: the weight average is not sharded; "
                             "set trainer.ema=null")
        if self.sync_batchnorm:
            raise ValueError("trainer.sync_batchnorm with trainer.strategy=fsdp: SyncBatchNorm is for DDP; "
                             "set trainer.sync_batchnorm=false")
        return self


class SchedulerConfig(Section):
    # none | step | multistep | exponential | cosine | onecycle (the keys below configure these), or any
    # torch.optim.lr_scheduler class by name in any case (StepLR, cosineannealingwarmrestarts, ...) or an
    # import path "package.module:Class", configured by scheduler.args.
    name: str = "none"
    args: dict[str, Any] = Field(default_factory=dict)  # a scheduler class's keyword arguments, e.g. {step_size: 1}
    # step: after every optimizer step; epoch: after every epoch. None: cosine and onecycle per step,
    # the other built-in names and every class per epoch.
    interval: Literal["step", "epoch"] | None = None
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup (epochs; fractions allowed for per-step schedules)
    warmup_steps: int = Field(0, ge=0)  # linear warmup over this many optimizer steps (per-step schedules)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)  # warmup starts at this fraction of optim.lr
    step_size: int = Field(10, gt=0)  # step: epochs between decays
    milestones: list[int] = Field(default_factory=lambda: [30, 60])  # multistep: epochs where lr *= gamma
    gamma: float = Field(0.1, gt=0)  # step / multistep / exponential: decay factor
    min_lr: float = Field(0.0, ge=0)  # cosine: final learning rate
    max_lr: float | None = Field(None, gt=0)  # onecycle: peak learning rate (None: optim.lr, per param group)
    pct_start: float = Field(0.3, gt=0, lt=1)  # onecycle: fraction of steps spent rising


class SampleConfig(Section):
    """Text generated by a language model at every validation, into TensorBoard's TEXT tab."""

    prompt: str = "\n"  # the text the model continues (its characters must be in the vocabulary)
    tokens: int = Field(200, gt=0)  # tokens (characters) generated
    temperature: float = Field(1.0, gt=0)  # < 1 sharpens the distribution, > 1 flattens it
    top_k: int | None = Field(None, gt=0)  # sample among the k likeliest tokens only; None: all
    seed: int = 0  # of the sampler's own generator: every validation draws alike, training's RNG is untouched


class LoggingConfig(Section):
    root: str = "runs"  # run folders go to <root>/<name>/<timestamp>/
    name: str | None = None  # None: the recipe file's stem; one folder name, never a path
    tensorboard: bool = True
    sample: SampleConfig | None = None  # text_chars: a generated text sample at every validation (TEXT tab)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str | None) -> str | None:
        # A separator, ".." or an absolute path would put the run outside logging.root.
        if name in (".", "..") or (name is not None and any(sep in name for sep in "/\\")):
            raise ValueError("must be one folder name under logging.root: no '/' or '\\', not '.' or '..'")
        return name


def _default_metrics() -> dict[str, MetricConfig]:
    return {"acc": MetricConfig(type="accuracy")}


class Recipe(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    metrics: dict[str, MetricConfig] = Field(default_factory=_default_metrics)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples), ready for YAML or JSON."""
        return self.model_dump(mode="json")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 insists on a dot: `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes one line with the source and line number."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HarnessError(f"{where}: YAML syntax error: {problem}") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe file, apply `a.b=c` overrides, validate. Raises HarnessError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"recipe not found: {path}")
    raw = parse_yaml(path.read_text(), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HarnessError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def validate_recipe(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate plain data against the schema; the first problem becomes one HarnessError line."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise HarnessError(_describe(e, raw, source)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-3` -> (["optim", "lr"], 0.003). The value is read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise HarnessError(f"override {item!r}: expected key=value, e.g. optim.lr=3e-3")
    return key.split("."), parse_yaml(value, f"override {item!r}")


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one override in the raw recipe. A mapping given for a section merges into what the file has
    (recursively, sub-sections too), the way Hydra-style overrides do: `optim={lr: 0.01}` changes lr and
    keeps the file's other optim keys. Any other value replaces, and so does a mapping for a key whose
    keys are the user's own (`model.args`, `metrics`): there is no other way to drop one of the file's."""
    keys, value = parse_override(item)
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            dotted = ".".join(keys[: depth + 1])
            raise HarnessError(f"override {item!r}: {dotted} is not a section")
        node = child
    node[keys[-1]] = _merged(node.get(keys[-1]), value, keys)


def _merged(old: Any, new: Any, keys: list[str]) -> Any:
    """`new` merged into `old` key by key when both are mappings and `keys` names a section; else `new`."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or _section_at(keys) is None:
        return new
    return {**old, **{key: _merged(old.get(key), value, [*keys, key]) for key, value in new.items()}}


def _section_at(keys: list[str]) -> type[BaseModel] | None:
    """The schema section a dotted key names (`optim`, `trainer.early_stopping`, `metrics.acc`); None for
    a value, an unknown key, or a mapping of the user's own keys (`model.args`, `metrics`)."""
    annotation: Any = Recipe
    for key in keys:
        section = _section_type(annotation)
        if section is not None:
            field = section.model_fields.get(key)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) is dict:  # metrics.<name>: the type of the mapping's values
            annotation = get_args(annotation)[1]
        else:
            return None
    return _section_type(annotation)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """`OptimConfig` or `EMAConfig | None` -> that section; a dict, list or plain type -> None."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return next((t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _describe(error: ValidationError, raw: dict[str, Any], source: str) -> str:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    more = error.error_count() - 1
    tail = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"; did you mean {'.'.join(loc[:-1] + close)!r}?" if close else ""
        return f"{source}: unknown key {key!r}{hint} Allowed here: {', '.join(allowed)}{tail}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {key}: {first['msg']}{shown}{tail}"


def _allowed_keys(section: list[str]) -> list[str]:
    """The keys allowed at a place in the schema: [] -> sections, ["optim"] -> optim's keys."""
    schema: type[BaseModel] = Recipe
    for part in section:
        if part.isdigit():  # a list item: optim.param_groups.0.lr
            continue
        if schema is Recipe and part == "metrics":  # metrics.<name>.<key>
            return list(MetricConfig.model_fields)
        annotation = schema.model_fields[part].annotation
        # `EMAConfig | None` -> EMAConfig
        candidates = (annotation, *get_args(annotation))
        schema = next(t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel))
    return list(schema.model_fields)


def flat_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; an empty mapping stays one key ({"model.args": {}})."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat_keys(value, f"{prefix}.{key}" if prefix else key))
    return out


def changed_keys(recipe: Recipe) -> dict[str, Any]:
    """The recipe's dotted keys whose values differ from the schema's defaults (what sets this run apart)."""
    defaults = flat_keys(Recipe().to_dict())
    return {key: value for key, value in flat_keys(recipe.to_dict()).items()
            if key not in defaults or defaults[key] != value}


def dump_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
