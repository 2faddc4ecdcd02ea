"""Typed, frozen access to params.yaml: the only home of settings, and the only place they are checked.

`load_params()` rejects unknown and missing keys with a message naming the key, values outside
their allowed set, and settings of different sections that contradict each other, so a typo in
params.yaml fails the first stage at once instead of a later one, or silently falling back to a default.
Stages receive the result (`Params`) and read only the sections their dvc.yaml entry declares.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """params.yaml does not match what the stages expect."""


@dataclass(frozen=True)
class Base:
    seed: int
    classes: tuple[str, ...]
    positive_classes: tuple[str, ...]


@dataclass(frozen=True)
class Validate:
    formats: tuple[str, ...]
    min_width: int
    min_height: int
    max_pixels: int
    max_excluded_share: float
    min_images_per_class: int


@dataclass(frozen=True)
class Dedup:
    hash: str
    hash_size: int
    max_distance: int             # duplicate groups (kept in one split)
    conflict_max_distance: int    # copies whose differing labels are a conflict (quarantined)
    contact_sheet_groups: int


@dataclass(frozen=True)
class Split:
    val: float
    calibration: float            # held out for the operating point (temperature and refer threshold)
    test: float


@dataclass(frozen=True)
class Shift:
    alpha: float                  # a shift is found when the combined p-value (both tests, Bonferroni) is below it
    permutations: int             # of each test; the smallest p-value is 1/(permutations + 1)
    max_reference: int            # the champion's reference images compared (a seeded sample when more)
    max_new: int                  # new images compared (a seeded sample when more)
    min_new_images: int           # fewer new images: "not checked"
    min_group_images: int         # a class or camera is compared when both sides hold this many
    on_shift: str                 # approve: the would-be champion waits for a clinician; hold: it becomes challenger
    sheet_images: int             # the most atypical new images on the contact sheet


@dataclass(frozen=True)
class Augment:
    target_per_class: int | None  # train images per class after augmentation; null: the largest class
    rotation: float               # degrees
    width_shift: float            # fraction of the width
    height_shift: float
    shear: float                  # degrees
    zoom: float                   # fraction
    horizontal_flip: bool
    brightness: tuple[float, ...]  # [low, high] factor


@dataclass(frozen=True)
class Architecture:
    weights: str                  # imagenet | none | path to a weights file
    alpha: float = 1.0            # MobileNetV2 width multiplier
    image_size: int | None = None  # null: the architecture's default
    base: str | None = None       # the network of pipeline/models.py, when the entry's name is not one (a probe)
    head: str = "network"         # network: trained (two phases); linear: a logistic-regression probe on frozen features


@dataclass(frozen=True)
class Train:
    architectures: dict[str, Architecture]
    experiment: str
    batch_size: int
    head_epochs: int
    head_learning_rate: float
    finetune_epochs: int
    finetune_learning_rate: float
    finetune_layers: int
    dropout: float
    l2: float
    class_weights: bool
    early_stopping_patience: int
    reduce_lr_patience: int
    reduce_lr_factor: float
    probe_c: tuple[float, ...]    # linear probes: inverse L2 strengths tried, one chosen by grouped CV on train
    probe_folds: int              # ... folds of whole duplicate groups


@dataclass(frozen=True)
class Ensemble:
    top_k: int                    # the probability average of the k best architectures by validation (0: none)


@dataclass(frozen=True)
class Cv:
    max_images: int               # below this many usable images (train + val), the chosen candidate's procedure
    folds: int                    # is also run in this many grouped, stratified folds over train + val

@dataclass(frozen=True)
class Evaluate:
    select_by: str                # chosen on validation
    bootstrap: int                # group resamples for intervals
    confidence: float             # two-sided interval level
    calibration_bins: int


@dataclass(frozen=True)
class OperatingPoint:
    positive_classes: tuple[str, ...] | None  # refer when their summed probability passes the threshold; null: base's
    target_sensitivity: float                 # of the refer decision, guaranteed on the calibration split ...
    confidence: float                         # ... with this confidence (Learn-then-Test, exact, by duplicate group)
    promote_below_target: bool                # may a model whose calibration data cannot guarantee the target be
                                              # promoted (stating the level it can guarantee)?


@dataclass(frozen=True)
class Export:
    min_top1_agreement: dict[str, float]    # per variant: float32, dynamic_range, float16
    max_probability_diff: dict[str, float]
    latency_repeats: int


@dataclass(frozen=True)
class Register:
    model_name: str
    rule: str                               # superiority | non_inferiority
    margin: float                           # non-inferiority margin on evaluate.select_by
    confidence: float                       # one-sided confidence of the paired comparison
    bootstrap: int                          # paired group resamples
    min_sensitivity: dict[str, float]       # clinical gates: class -> minimum test recall
    min_specificity: float                  # ... and of the refer decision: a threshold that refers everyone
                                            # reaches any sensitivity
    gate_on: str                            # point | lower_bound
    require_approval: bool                  # clinician sign-off before @champion moves
    approval_timeout_seconds: int
    lock_timeout_seconds: int               # wait for another register moving @champion


@dataclass(frozen=True)
class LabelReview:
    architecture: str             # feature extractor (frozen, pretrained)
    weights: str                  # imagenet | path to a weights file
    alpha: float
    image_size: int
    folds: int                    # grouped folds for out-of-fold probabilities
    sheet_images: int


@dataclass(frozen=True)
class Flow:
    cron: str                       # nightly retraining schedule
    timezone: str                   # IANA time zone the cron is read in (flows/serve.py)
    check_interval_seconds: int     # how often the on-new-data deployment looks at data/raw
    quiet_seconds: int              # files must have stopped arriving this long before a run starts
    commit: bool                    # commit what the run changed (flows/workspace.py COMMITTED) after a successful run
    push: bool                      # push data and outputs to the DVC remote
    lock_timeout_seconds: int       # how long a second run on the same workspace waits (0: exits at once)
    retries: int                    # for tasks that touch remote services (DVC remote, MLflow registry)
    retry_delay_seconds: int
    command_timeout_seconds: int    # every dvc/git command of the flow
    stage_timeout_seconds: int      # every DVC stage
    train_on: str                   # local | workers (each train@<arch> a flow run on the work pool)
    train_retries: int              # workers: a failed or crashed train flow run is started again this often


@dataclass(frozen=True)
class Clinic:
    host: str                       # the clinic's page (clinic/, `make app`): loopback only (no TLS here)
    port: int
    max_upload_mb: float            # "try a photo": larger uploads are refused before they are decoded
    session_minutes: int            # a sign-in expires after this long
    show_file_names: bool           # false: images are shown by their content ID (sha256 prefix), never by name
    accounts: str                   # the accounts database (SQLite, mode 600), relative to the project root


@dataclass(frozen=True)
class Params:
    """Every section of params.yaml, checked."""
    base: Base
    validate: Validate
    dedup: Dedup
    split: Split
    shift: Shift
    augment: Augment
    train: Train
    ensemble: Ensemble
    cv: Cv
    evaluate: Evaluate
    operating_point: OperatingPoint
    export: Export
    register: Register
    label_review: LabelReview
    flow: Flow
    clinic: Clinic


SECTIONS: dict[str, type] = typing.get_type_hints(Params)

# allowed values (the stages that use them look names up in their own tables, keyed the same way)
HASH_KINDS = ("phash", "dhash", "ahash", "whash")
RULES = ("superiority", "non_inferiority")
GATES = ("point", "lower_bound")
TRAIN_ON = ("local", "workers")
ON_SHIFT = ("approve", "hold")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HEADS = ("network", "linear")
# metrics a non-inferiority test can bound with a stated error rate (linear in per-image correctness)
LINEAR_METRICS = ("accuracy", "balanced_accuracy")


def _coerce(value, kind, where: str):
    """Check one value against its annotation; lists become tuples so params stay frozen."""
    origin = typing.get_origin(kind)
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise ParamsError(f"{where}: expected a non-empty mapping, got {value!r}")
        _, item = typing.get_args(kind)
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        inner = [a for a in typing.get_args(kind) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParamsError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def build(cls, raw, where: str):
    """Build dataclass `cls` from a mapping, naming any unknown or missing key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(raw))
    if unknown:
        raise ParamsError(f"unknown key {where}.{unknown[0]} (allowed: {', '.join(hints)})")
    if missing:
        raise ParamsError(f"missing key {where}.{missing[0]}")
    return cls(**{k: _coerce(raw[k], hints[k], f"{where}.{k}") for k in hints if k in raw})


def selectable_metrics(base: Base) -> list[str]:
    """What evaluate.select_by may name: class-averaged scores and each positive class's sensitivity."""
    return ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"] + [f"sensitivity_{c}" for c in base.positive_classes]


def positive_set(p: Params) -> tuple[str, ...]:
    """The classes whose summed probability is the refer score."""
    return p.operating_point.positive_classes or p.base.positive_classes


def _one_of(value, allowed, where: str) -> None:
    if value not in allowed:
        raise ParamsError(f"{where} is {value!r}; allowed: {', '.join(map(str, allowed))}")


def check(p: Params) -> Params:
    """Allowed values and the rules that tie sections together; returns p unchanged when all hold."""
    classes = p.base.classes
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ParamsError(f"base.classes needs at least two distinct names, got {list(classes)}")
    for where, names in (("base.positive_classes", p.base.positive_classes),
                         ("register.min_sensitivity", tuple(p.register.min_sensitivity))):
        unknown = [c for c in names if c not in classes]
        if unknown:
            raise ParamsError(f"{where} names {unknown[0]!r}, which is not in base.classes {list(classes)}")
    unknown = [c for c in p.operating_point.positive_classes or () if c not in classes]
    if unknown:
        raise ParamsError(f"operating_point.positive_classes names {unknown[0]!r}, which is not in base.classes "
                          f"{list(classes)}")
    if not positive_set(p) or len(positive_set(p)) == len(classes):
        raise ParamsError("the positive classes (operating_point.positive_classes, else base.positive_classes) must "
                          "name at least one class and leave at least one out")
    for key in ("target_sensitivity", "confidence"):
        if not 0 < getattr(p.operating_point, key) < 1:
            raise ParamsError(f"operating_point.{key} is {getattr(p.operating_point, key)}; allowed: between 0 and 1")
    _one_of(p.dedup.hash, HASH_KINDS, "dedup.hash")
    if not 2 <= p.dedup.hash_size <= 8:
        raise ParamsError(f"dedup.hash_size is {p.dedup.hash_size}; allowed: 2..8 (hashes of at most 64 bits)")
    held_out = (p.split.val, p.split.calibration, p.split.test)
    if not 0 < sum(held_out) < 1 or min(held_out) < 0:
        raise ParamsError("split.val, split.calibration and split.test must be >= 0 with a sum between 0 and 1")
    _one_of(p.evaluate.select_by, selectable_metrics(p.base), "evaluate.select_by")
    _one_of(p.register.rule, RULES, "register.rule")
    _one_of(p.register.gate_on, GATES, "register.gate_on")
    if not 0 <= p.register.min_specificity < 1:
        raise ParamsError(f"register.min_specificity is {p.register.min_specificity}; allowed: 0 to below 1")
    if p.register.rule == "non_inferiority" and not (p.evaluate.select_by in LINEAR_METRICS
                                                     or p.evaluate.select_by.startswith("sensitivity_")):
        raise ParamsError(f"register.rule non_inferiority has no test with a stated error rate for "
                          f"evaluate.select_by {p.evaluate.select_by}; use superiority, or select_by "
                          f"{', '.join(LINEAR_METRICS)} or sensitivity_<class>")
    if p.label_review.folds < 2:
        raise ParamsError(f"label_review.folds is {p.label_review.folds}; allowed: 2 or more")
    _one_of(p.flow.train_on, TRAIN_ON, "flow.train_on")
    _check_candidates(p)
    _check_shift(p.shift)
    _check_clinic(p.clinic)
    _time_zone(p.flow.timezone, "flow.timezone")
    return p


def _time_zone(name: str, where: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ParamsError(f"{where} is {name!r}, not an IANA time zone name (e.g. UTC, Europe/Madrid)") from None


def _check_candidates(p: Params) -> None:
    """Probes have pretrained features; the ensemble and the CV estimate fit what is trained. (A network name
    pipeline/models.py lacks, as an entry's name or its `base`, is train's to refuse: models.get_arch.)"""
    for name, spec in p.train.architectures.items():
        where = f"train.architectures.{name}"
        _one_of(spec.head, HEADS, f"{where}.head")
        if spec.head == "linear" and spec.weights == "none":
            raise ParamsError(f"{where}: a linear probe needs pretrained features (weights imagenet or a file)")
    if not p.train.probe_c or min(p.train.probe_c) <= 0:
        raise ParamsError("train.probe_c must list at least one inverse regularisation strength > 0")
    if p.train.probe_folds < 2:
        raise ParamsError(f"train.probe_folds is {p.train.probe_folds}; allowed: 2 or more")
    k = p.ensemble.top_k
    if k < 0 or k == 1:  # more than there are architectures: all of them (fewer than two: no ensemble)
        raise ParamsError(f"ensemble.top_k is {k}; allowed: 0 (no ensemble) or 2 or more")
    if p.cv.folds < 3 or p.cv.max_images < 0:
        raise ParamsError(f"cv.folds is {p.cv.folds}; allowed: 3 or more (one fold scores, one stops early, "
                          f"the rest train), and cv.max_images >= 0")


def _check_shift(s: Shift) -> None:
    _one_of(s.on_shift, ON_SHIFT, "shift.on_shift")
    if not 0 < s.alpha < 1:
        raise ParamsError(f"shift.alpha is {s.alpha}; allowed: between 0 and 1")
    if 2 / (s.permutations + 1) >= s.alpha:  # two tests combined: the smallest p-value reachable is 2/(n+1)
        raise ParamsError(f"shift.permutations is {s.permutations}: too few to ever find a shift at shift.alpha "
                          f"{s.alpha}; use at least {int(2 / s.alpha)}")
    if min(s.min_new_images, s.min_group_images) < 2 or s.max_new < s.min_new_images or s.max_reference < 2:
        raise ParamsError("shift: min_new_images and min_group_images must be >= 2, max_new >= min_new_images "
                          "and max_reference >= 2")


def _check_clinic(c: Clinic) -> None:
    if c.host not in LOOPBACK:  # beyond loopback: TLS or no start, and this server has no TLS
        raise ParamsError(f"clinic.host is {c.host!r}; allowed: {', '.join(LOOPBACK)} (beyond loopback put a "
                          "TLS reverse proxy in front and keep the app on loopback)")
    if not 0 < c.port < 65536:
        raise ParamsError(f"clinic.port is {c.port}; allowed: 1..65535")
    if c.max_upload_mb <= 0 or c.session_minutes <= 0:
        raise ParamsError("clinic.max_upload_mb and clinic.session_minutes must be > 0")
    if not c.accounts.strip():
        raise ParamsError("clinic.accounts is empty; name a file (relative to the project root)")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Every section, built and checked; an unknown or missing section is an error too."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"unknown params section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    missing = [name for name in SECTIONS if name not in raw]
    if missing:
        raise ParamsError(f"missing section {missing[0]!r} in {path}")
    return check(Params(**{name: build(kind, raw[name], name) for name, kind in SECTIONS.items()}))
