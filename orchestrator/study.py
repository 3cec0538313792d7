"""Study files: load the YAML, apply `--set` overrides, validate, expand the grid into trials.

Every error names the file (or the override), the dotted key and what was
expected, and is raised before anything runs.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator

from analysis.contract import TRIAL_SECTIONS, flatten
from gat_core.config import DataConfig, EvalConfig, ModelConfig, StrictModel, TrainConfig, TrialConfig
from gat_core.weights import missing_weights
from orchestrator.study_file import StudyError, apply_overrides, check_values, read_yaml, set_dotted, short_repr
from orchestrator.trial_identity import trial_hash

_KEY_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)
MAX_GRID_POINTS = 10_000


class ResourcesConfig(StrictModel):
    """What one trial may use, and how many trials run at once."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of one trial (of each worker when workers > 1).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs of one trial (of each worker when workers > 1).")
    workers: int = Field(1, ge=1, description="Data-parallel workers per trial (Ray Train; gloo on CPU, NCCL on "
                         "GPU); each takes train.batch_size / workers of every batch.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once (default: as many as the resources "
                                       "allow; with workers > 1, as many as the cluster's CPUs/GPUs hold at start).")
    max_failures: int = Field(2, ge=0, description="Restarts of a crashed trial from its checkpoint.")


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
ACCEPTED_TRACKING = ("sqlite:///path/to/mlflow.db (relative to the working directory, or sqlite:////absolute/path), "
                     "http(s)://host:port (an MLflow server) or a database URI (postgresql://..., mysql://...)")


def check_tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """The tracking URI to use: a relative sqlite path made absolute against `cwd` (the working directory by
    default; a Ray worker's differs, and would open a second, empty store), anything else of TRACKING_SCHEMES
    (database dialects such as postgresql+psycopg2 included) as given.  ValueError naming the accepted forms
    otherwise; MLflow 3 refuses its filesystem store (file:// or a plain folder), so it is refused here, before
    anything is trained, rather than in the first trial."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme == "file" or (not scheme and uri.strip() and uri.strip() != "databricks"):
        raise ValueError(f"tracking URI {uri!r}: MLflow 3's filesystem store (file:// or a folder) is in maintenance "
                         f"mode and refuses new runs; use {ACCEPTED_TRACKING} (`mlflow migrate-filestore` converts an "
                         "existing store of that kind)")
    if (scheme and scheme not in TRACKING_SCHEMES) or not uri.strip() or (scheme in ("http", "https", "sqlite")
                                                                         and uri.split("://", 1)[1] in ("", "/")):
        raise ValueError(f"tracking URI {uri!r} is not one MLflow can use; expected {ACCEPTED_TRACKING}")
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else "/"  # sqlite:////abs: path "/abs"
    if not path.startswith(("/", ":memory:", "file:")):
        return f"sqlite:///{(cwd or Path.cwd()) / Path(path).expanduser()}"
    return uri


class TrackingConfig(StrictModel):
    """Where results go: an MLflow URI (default: sqlite under the output folder) and experiment."""

    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<output_dir>/mlflow.db.")
    experiment: str | None = Field(None, description="MLflow experiment; default: the study name.")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str | None) -> str | None:
        return None if uri is None else check_tracking_uri(uri)


BUDGET_KEY = "train.flops_budget"
ISOFLOP_FORBIDDEN = ("train.steps", BUDGET_KEY)  # keys an isoFLOP study sets itself


def _flat_keys(entry: Any, where: str) -> dict[str, Any]:
    """A size mapping with nested sections (`{model: {width: 32}}`) as dotted keys (`{model.width: 32}`)."""
    if not isinstance(entry, dict) or not entry:
        raise ValueError(f"{where}: expected a preset name or a non-empty mapping of dotted keys "
                         f"(e.g. {{model.width: 32, model.depth: 2}}), got {short_repr(entry)}")
    flat: dict[str, Any] = {}
    for key, value in entry.items():
        key = str(key)
        nested = flatten(value, key + ".") if isinstance(value, dict) and "." not in key else {key: value}
        for dotted, leaf in nested.items():
            if dotted in flat:
                raise ValueError(f"{where}: {dotted} is given twice")
            if dotted.split(".")[0] not in TRIAL_SECTIONS or "." not in dotted:
                raise ValueError(f"{where}: {dotted}: a size can only set keys under {', '.join(TRIAL_SECTIONS)}")
            if dotted in ISOFLOP_FORBIDDEN:
                raise ValueError(f"{where}: {dotted}: an isoFLOP study sets it from isoflop.budgets")
            flat[dotted] = leaf
    return flat


class IsoflopConfig(StrictModel):
    """An isoFLOP design (Chinchilla's approach 2): every model size trained at every compute budget, each trial's
    steps derived from its budget (`train.flops_budget`), so the analysis can find the best size per budget."""

    budgets: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        ..., min_length=2, description="Training budgets in MACs (1 multiply-accumulate = 1 FLOP), one trial per "
        "budget and size; each trial's train.flops_budget (its steps follow from it).")
    sizes: list[dict[str, Any]] = Field(
        ..., min_length=3, description="Model sizes: a list of preset names (GAT-S/2) or of mappings of dotted keys "
        "({model.width: 32, model.depth: 2}), or one mapping of dotted keys to equal-length lists, zipped "
        "({model.width: [16, 32, 64], model.heads: [2, 4, 4]}).")

    @field_validator("budgets", mode="before")
    @classmethod
    def _no_booleans(cls, budgets: Any) -> Any:
        if isinstance(budgets, list) and any(isinstance(b, bool) for b in budgets):
            raise ValueError(f"expected numbers of MACs such as 1e13, got {short_repr(budgets)}")
        return budgets

    @field_validator("budgets")
    @classmethod
    def _distinct(cls, budgets: list[float]) -> list[float]:
        for i, budget in enumerate(budgets):
            if budget in budgets[:i]:
                raise ValueError(f"budget {budget:g} is given twice")
        return budgets

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, sizes: Any) -> list[dict[str, Any]]:
        where = "isoflop.sizes"
        if isinstance(sizes, dict):
            flat = _flat_keys(sizes, where)
            lengths = {key: len(v) if isinstance(v, list) else None for key, v in flat.items()}
            if bad := [k for k, n in lengths.items() if not n]:
                raise ValueError(f"{where}.{bad[0]}: expected a non-empty list of values, one per size (the lists "
                                 "of a sizes mapping are zipped)")
            if len(set(lengths.values())) > 1:
                listing = ", ".join(f"{k} has {n}" for k, n in lengths.items())
                raise ValueError(f"{where}: the lists of a sizes mapping are zipped (one size per position) and "
                                 f"must have the same length: {listing}")
            entries = [dict(zip(flat, values)) for values in zip(*flat.values())]
        elif isinstance(sizes, list):
            entries = [{"model.preset": e} if isinstance(e, str) else _flat_keys(e, f"{where}.{i}")
                       for i, e in enumerate(sizes)]
        else:
            raise ValueError(f"{where}: expected a list of sizes or a mapping of dotted keys to lists, "
                             f"got {short_repr(sizes)}")
        for i, entry in enumerate(entries):
            if entry in entries[:i]:
                raise ValueError(f"{where}: sizes {entries.index(entry)} and {i} are the same ({short_repr(entry)})")
        return entries

    def keys(self) -> set[str]:
        """The dotted keys the design sets in every trial."""
        return {BUDGET_KEY, *(key for size in self.sizes for key in size)}


def _grid_sets(key: str, values: list[Any]) -> set[str]:
    """The dotted keys a grid entry sets (a linked set or a section mapping sets several)."""
    if key.split(".")[0] in TRIAL_SECTIONS:
        return {key, *(f"{key}.{k}" for v in values if isinstance(v, dict) for k in v)}
    return {str(k) for v in values if isinstance(v, dict) for k in v}


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class StudyConfig(StrictModel):
    """A study file: a base trial, a grid of changes to it, resources and tracking."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Study name (experiment and folder name).")
    description: str = ""
    output_dir: Path | None = Field(None, description="Folder for checkpoints, samples and the default MLflow store; default runs/<name>.")
    dataset: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=1000))
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted key -> list of values; trials are the cartesian product.")
    isoflop: IsoflopConfig | None = Field(
        None, description="An isoFLOP study: every budget x size (x every grid point, e.g. seeds), each trial's "
        "train.flops_budget set from its budget; the base train section then has neither steps nor flops_budget.")

    @model_validator(mode="before")
    @classmethod
    def _isoflop_base(cls, data: Any) -> Any:
        """An isoFLOP study's base trial takes the first budget (each trial gets its own), so its train section
        validates without steps; steps or a budget given there would be silently replaced, so they are errors."""
        if not isinstance(data, dict) or data.get("isoflop") is None:
            return data
        train = data.get("train") or {}
        if not isinstance(train, dict):
            return data
        for key in ISOFLOP_FORBIDDEN:
            if train.get(key.split(".")[1]) is not None:
                raise ValueError(f"{key}: an isoFLOP study sets each trial's train.flops_budget from isoflop.budgets "
                                 f"(its steps follow from it); remove {key} from the train section")
        budgets = data["isoflop"].get("budgets") if isinstance(data["isoflop"], dict) else None
        try:  # YAML reads 1e13 (no dot) as a string; pydantic, and this, take it as the number
            first = float(budgets[0]) if isinstance(budgets, list) and budgets else 1.0
        except (TypeError, ValueError):
            first = 1.0  # isoflop.budgets' own validation names the problem
        first = first if math.isfinite(first) and first > 0 else 1.0
        return {**data, "train": {**train, "flops_budget": first}}

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key}: empty list of values")
            if key.split(".")[0] in TRIAL_SECTIONS:
                continue
            # a named set of linked values: each entry maps dotted keys to values, e.g. a family with its optimiser
            linked = all(isinstance(v, dict) and v and all(str(k).split(".")[0] in TRIAL_SECTIONS for k in v)
                         for v in values)
            if not linked:
                raise ValueError(f"grid.{key}: can only sweep keys under {', '.join(TRIAL_SECTIONS)}, or list "
                                 "mappings of such dotted keys that change together")
        points = math.prod(len(values) for values in grid.values())
        if points > MAX_GRID_POINTS:
            raise ValueError(f"{points} grid points (the product of the list lengths) exceed the limit of "
                             f"{MAX_GRID_POINTS}; split the study")
        return grid

    @model_validator(mode="after")
    def _isoflop_grid(self) -> "StudyConfig":
        if self.isoflop is None:
            return self
        design = self.isoflop.keys()
        for key, values in self.grid.items():
            clash = sorted(d for d in design for k in _grid_sets(key, values) if _overlaps(d, k))
            if clash:
                source = "isoflop.budgets" if clash[0] == BUDGET_KEY else "isoflop.sizes"
                raise ValueError(f"grid.{key}: {clash[0]} is set by {source}; an isoFLOP study takes its budgets "
                                 "and sizes from the isoflop section (remove it from the grid)")
        points = len(self.isoflop.budgets) * len(self.isoflop.sizes) * math.prod(len(v) for v in self.grid.values())
        if points > MAX_GRID_POINTS:
            raise ValueError(f"isoflop: {points} trials (budgets x sizes x grid points) exceed the limit of "
                             f"{MAX_GRID_POINTS}; split the study")
        return self

    @property
    def out(self) -> Path:
        return (self.output_dir or Path("runs") / self.name).resolve()

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.out / 'mlflow.db'}"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


@dataclass(frozen=True)
class Trial:
    """One grid point: its id (a hash of what it learns from: `identity_items`), a readable name and its
    validated config."""

    trial_id: str
    name: str
    index: int
    swept: dict[str, Any]
    config: TrialConfig

    def params(self) -> dict[str, Any]:
        """Flattened dotted parameters (`model.width`, `train.mng`, ...)."""
        return flatten(self.config.model_dump(mode="json"))


@dataclass(frozen=True)
class Study:
    config: StudyConfig
    source: str
    raw: dict[str, Any]
    trials: list[Trial]
    missing_files: list[str] = field(default_factory=list)  # require_files=False: what `run` would refuse


def _format_errors(exc: ValidationError, where: str, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        key = prefix + ".".join(str(part) for part in err["loc"])
        msg = err["msg"]
        match = _KEY_PREFIX.match(msg)
        if match:  # a cross-field check names its own key
            key, msg = (f"{prefix}{match.group(1)}" if prefix.startswith("grid") else match.group(1)), match.group(2)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict):
            msg = f"{msg} (got {short_repr(err['input'])})"
        if len(msg) > 500:  # a validator that quotes a huge input
            msg = msg[:500] + " ..."
        lines.append(f"{where}: {key or '<top level>'}: {msg}")
    return lines


def path_problems(config: StrictModel) -> list[str]:
    """'key: what' lines for the paths of a config that the OS refuses outright (a name too long, a symlink
    loop), which would otherwise surface as an OSError from the first check that touches them."""
    problems = []
    for key, value in flatten(config.model_dump()).items():
        if isinstance(value, Path):
            try:
                value.stat()
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                pass
            except OSError as exc:
                problems.append(f"{key}: unusable path {short_repr(str(value))} ({exc.strerror})")
    return problems


PATH_KEYS = ("dataset.path", "dataset.latents", "train.vfm.weights", "eval.vae", "eval.inception_weights",
             "eval.dinov2_weights", "eval.reference_stats")
"""The file and folder keys of a trial; relative values are resolved against the working directory."""


def absolute_paths(tree: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """A copy of a trial tree whose relative path values (PATH_KEYS) are made absolute against `cwd`, so a
    Ray worker, whose working directory is not the user's, finds the same files."""
    tree = copy.deepcopy(tree)
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and node[leaf] and "\0" not in node[leaf]:
            node[leaf] = str(cwd / Path(node[leaf]).expanduser())
    return tree


def data_problems(config: TrialConfig) -> list[str]:
    """'key: what' lines for data that cannot be found (checked before anything runs)."""
    d = config.dataset
    if d.name == "folder" and d.path is not None and d.latents is None and not d.path.is_dir():
        return [f"dataset.path: folder {d.path} does not exist or is not a directory"]
    return []


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid's value lists, in file order (first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def design_points(config: StudyConfig) -> list[dict[str, Any]]:
    """The study's grid points: the grid's, or in an isoFLOP study every budget x size x grid point (budget
    slowest), each setting `train.flops_budget` and the size's keys beside the grid's."""
    grid = expand_grid(config.grid)
    if config.isoflop is None:
        return grid
    return [{BUDGET_KEY: budget, **size, **point}
            for budget in config.isoflop.budgets for size in config.isoflop.sizes for point in grid]


def _slug_value(value: Any) -> str:
    """A swept value in a trial name: lists as `a+b` (`none` when empty: `augment: []` must not read `augment=`)."""
    if isinstance(value, (list, tuple)):
        return "+".join(_slug_value(v) for v in value) or "none"
    return str(value)


def _slug(swept: dict[str, Any]) -> str:
    if not swept:
        return "base"
    parts = []
    for key, value in swept.items():
        if isinstance(value, dict) and key.split(".")[0] not in TRIAL_SECTIONS:  # linked set: its first value names it
            parts.append(f"{key}={_slug_value(next(iter(value.values())))}")
        elif isinstance(value, dict):
            parts += [f"{str(k).split('.')[-1]}={_slug_value(v)}" for k, v in value.items()]
        else:
            parts.append(f"{key.split('.')[-1]}={_slug_value(value)}")
    return re.sub(r"[^A-Za-z0-9=_.,/+-]+", "", ",".join(parts))[:120]


# SD-VAE convention (the VAE of DiT and GAT): 4 latent channels, 8x downsampling
STAND_IN_LATENT_CHANNELS, STAND_IN_DOWNSAMPLING = 4, 8


def _stand_in_latents(tree: dict[str, Any], folders: dict[tuple[str, int], str]) -> str | None:
    """For `load_study(require_files=False)`: when the trial tree's `dataset.latents` folder has no meta.json,
    point it at a temporary folder whose meta.json describes SD-VAE latents of `dataset.resolution` (4 channels,
    resolution / 8), so the trial's shapes can be planned; returns the original path (None if nothing changed).
    The stand-ins are deleted when the process exits; `run` never uses them (it requires the files)."""
    data = tree.get("dataset") if isinstance(tree.get("dataset"), dict) else None
    latents = data.get("latents") if data else None
    if not isinstance(latents, str) or not latents or "\0" in latents or (Path(latents) / "meta.json").is_file():
        return None
    resolution = data.get("resolution", DataConfig.model_fields["resolution"].default)
    if not isinstance(resolution, int) or resolution < STAND_IN_DOWNSAMPLING:
        return None
    key = (latents, resolution)
    if key not in folders:
        folder = tempfile.mkdtemp(prefix="gat-study-plan-latents-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        meta = {"stand_in_for": latents, "latent_channels": STAND_IN_LATENT_CHANNELS,
                "latent_resolution": resolution // STAND_IN_DOWNSAMPLING}
        (Path(folder) / "meta.json").write_text(json.dumps(meta))
        folders[key] = folder
    data["latents"] = folders[key]
    return latents


def load_study(path: str | Path, overrides: list[str] | None = None, *, require_files: bool = True) -> Study:
    """Read, override, validate and expand a study; raises StudyError listing every problem.

    `require_files=False` (for `plan` on a machine without the study's weights and data): missing weights,
    reference files and data folders are listed in `Study.missing_files` instead of refused, and a missing
    `dataset.latents` folder is planned as SD-VAE latents of `dataset.resolution` (`_stand_in_latents`, noted
    in `missing_files`); the trial ids are those the real files give."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides or [])
    where = f"{path}" + (" (with --set overrides)" if overrides else "")
    if problems := check_values(raw, where):
        raise StudyError(problems)
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise StudyError(_format_errors(exc, where)) from None
    if problems := [f"{where}: {line}" for line in path_problems(config)]:
        raise StudyError(problems)

    cwd = Path.cwd()
    base = absolute_paths({section: raw.get(section, {}) or {} for section in TRIAL_SECTIONS}, cwd)
    if "train" not in raw and config.isoflop is None:
        base["train"] = {"steps": 1000}
    problems: list[str] = []
    missing: list[str] = []
    stand_ins: dict[tuple[str, int], str] = {}
    trials: list[Trial] = []
    seen: dict[str, int] = {}
    for index, point in enumerate(design_points(config)):
        tree = copy.deepcopy(base)
        for key, value in point.items():
            if key.split(".")[0] in TRIAL_SECTIONS:
                set_dotted(tree, key, value)
            else:  # linked values
                for linked_key, linked_value in value.items():
                    set_dotted(tree, linked_key, linked_value)
        tree = absolute_paths(tree, cwd)
        real_latents = None if require_files else _stand_in_latents(tree, stand_ins)
        try:
            trial_cfg = TrialConfig.model_validate(tree)
        except ValidationError as exc:
            label = ", ".join(f"{k}={short_repr(v)}" for k, v in point.items()) or "base config"
            problems += [f"{line} [grid point {index}: {label}]" for line in _format_errors(exc, where)]
            continue
        file_problems = [f"{where}: {line}" for line in
                         path_problems(trial_cfg) or data_problems(trial_cfg) or missing_weights(trial_cfg)]
        real_cfg = trial_cfg  # the config `run` would have: its id is the trial's
        if real_latents is not None:
            real_cfg = trial_cfg.model_copy(update={"dataset": trial_cfg.dataset.model_copy(
                update={"latents": Path(real_latents)})})
            file_problems.append(
                f"{where}: dataset.latents: folder {real_latents} (its meta.json) not found; create it with "
                "`gat-study encode`. Planned as SD-VAE latents of dataset.resolution "
                f"{trial_cfg.dataset.resolution}: {STAND_IN_LATENT_CHANNELS}x{trial_cfg.dataset.model_resolution}x"
                f"{trial_cfg.dataset.model_resolution}")
        if require_files:
            problems += file_problems
        else:
            missing += [line for line in file_problems if line not in missing]
        workers = config.resources.workers
        if trial_cfg.train.batch_size % workers:
            problems.append(f"{where}: train.batch_size: {trial_cfg.train.batch_size} does not split over "
                            f"resources.workers = {workers} data-parallel workers [grid point {index}: {_slug(point)}]")
        trial_id = trial_hash(real_cfg, point)
        if trial_id in seen:
            problems.append(f"{where}: grid: grid points {seen[trial_id]} and {index} give the same trial ({_slug(point)})")
            continue
        seen[trial_id] = index
        trials.append(Trial(trial_id=trial_id, name=_slug(point), index=index, swept=point, config=trial_cfg))
    if problems:
        raise StudyError(sorted(set(problems), key=problems.index))
    return Study(config=config, source=str(path), raw=raw, trials=trials, missing_files=missing)
