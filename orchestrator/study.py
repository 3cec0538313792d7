"""Study files: load the YAML, apply `--set` overrides, validate, expand the grid into trials.

Every error names the file (or the override), the dotted key and what was
expected, and is raised before anything runs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gat_core.config import DataConfig, EvalConfig, ModelConfig, StrictModel, TrainConfig, TrialConfig
from gat_core.weights import missing_weights

TRIAL_SECTIONS = ("dataset", "model", "train", "eval")
_KEY_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)
MAX_VALUES = 100_000  # values in a parsed study, aliases expanded: a "billion laughs" file stops here
MAX_DEPTH = 64  # nesting levels of a parsed study
MAX_GRID_POINTS = 10_000
INT_LIMIT = 2**63 - 1  # what torch, numpy and MLflow can take

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxlevel = 3


def _short(value: Any) -> str:
    """A repr short enough for an error line, whatever the value."""
    return _REPR.repr(value)


class StudyError(ValueError):
    """A study that cannot run; `problems` are 'where: key: what' lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ResourcesConfig(StrictModel):
    """What one trial may use, and how many trials run at once."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of one trial (of each worker when workers > 1).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs of one trial (of each worker when workers > 1).")
    workers: int = Field(1, ge=1, description="Data-parallel workers per trial (Ray Train; gloo on CPU, NCCL on "
                         "GPU); each takes train.batch_size / workers of every batch.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once (default: as many as the resources "
                                       "allow; with workers > 1, as many as the cluster's CPUs/GPUs hold at start).")
    max_failures: int = Field(2, ge=0, description="Restarts of a crashed trial from its checkpoint.")


TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(uri: str) -> str:
    """`uri` itself when MLflow can use it as a tracking store (a local path or one of TRACKING_SCHEMES,
    database dialects such as postgresql+psycopg2 included); ValueError naming the accepted forms otherwise."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if (scheme and scheme not in TRACKING_SCHEMES) or not uri.strip() or (scheme in ("http", "https", "sqlite")
                                                                         and uri.split("://", 1)[1] in ("", "/")):
        raise ValueError(f"tracking URI {uri!r} is not one MLflow can use; expected sqlite:///path/to/mlflow.db, "
                         "http(s)://host:port (an MLflow server), file:///folder, a database URI "
                         "(postgresql://..., mysql://...) or a local folder")
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
                         f"(e.g. {{model.width: 32, model.depth: 2}}), got {_short(entry)}")
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
            raise ValueError(f"expected numbers of MACs such as 1e13, got {_short(budgets)}")
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
                             f"got {_short(sizes)}")
        for i, entry in enumerate(entries):
            if entry in entries[:i]:
                raise ValueError(f"{where}: sizes {entries.index(entry)} and {i} are the same ({_short(entry)})")
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


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; a dict value merges into what is there."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = {**node[leaf], **value}
    else:
        node[leaf] = value


_BOOL_TAG = "tag:yaml.org,2002:bool"


class _StudyLoader(yaml.SafeLoader):
    """yaml.SafeLoader with YAML 1.2 booleans and strict mappings.

    Only true/false (any case style) are booleans: YAML 1.1's on/off/yes/no stay strings, so
    `train.mng: [exp, off]` means the schedule named "off" (a boolean field still takes "off" as
    false).  A key given twice in one mapping is an error, not a silent last-one-wins.  Unreadable
    scalars (2001-02-30, `!!int many`, a 5000-digit int) are YAML errors with a position instead of a
    ValueError from deep inside the constructor."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)} (a key may appear once in a mapping)", key_node.start_mark)
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError):
            problem = f"cannot read {_short(node.value)[1:-1]} as a YAML {node.tag.rsplit(':', 1)[-1]}"
            raise yaml.constructor.ConstructorError(
                None, None, f"{problem} (quote it to make it a string)", node.start_mark) from None


_StudyLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _safe_load(text: str) -> Any:
    """yaml.safe_load with the errors above; RecursionError (absurd nesting) is left to the caller."""
    return yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """`train.steps=200` -> ('train.steps', 200); values are YAML (numbers, lists, true/false)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_/.-]+)*", key):
        raise StudyError([f"--set {text}: expected KEY=VALUE with a dotted key, e.g. train.steps=200"])
    try:
        return key, _safe_load(value)
    except (yaml.YAMLError, RecursionError) as exc:
        problem = getattr(exc, "problem", None) or "nested too deeply"
        raise StudyError([f"--set {_short(text)[1:-1]}: value is not valid YAML ({problem})"]) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("grid."):
            raw.setdefault("grid", {})
            if not isinstance(raw["grid"], dict):
                raise StudyError([f"--set {text}: the study's grid is not a mapping"])
            raw["grid"][key[len("grid."):]] = value if isinstance(value, list) else [value]
        else:
            set_dotted(raw, key, value)
    return raw


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
            msg = f"{msg} (got {_short(err['input'])})"
        if len(msg) > 500:  # a validator that quotes a huge input
            msg = msg[:500] + " ..."
        lines.append(f"{where}: {key or '<top level>'}: {msg}")
    return lines


def _line_column(data: bytes | str, offset: int) -> str:
    """'line:column' (1-based) of an offset into a file's bytes or text."""
    newline = b"\n" if isinstance(data, bytes) else "\n"
    return f"{data.count(newline, 0, offset) + 1}:{offset - (data.rfind(newline, 0, offset) + 1) + 1}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a UTF-8 study file with a safe loader; errors carry the line and column."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StudyError([f"{path}: cannot read study file ({exc.strerror or exc})"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StudyError([f"{path}:{_line_column(data, exc.start)}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8"]) from None
    try:
        raw = _safe_load(text)
    except RecursionError:
        raise StudyError([f"{path}: invalid YAML: nested too deeply"]) from None
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. NUL
            where, problem = f"{path}:{_line_column(text, exc.position)}", f"character {exc.character!r} is not allowed"
        elif "'\\t'" in problem:
            problem = "a tab where YAML expects spaces (tabs cannot indent YAML)"
        raise StudyError([f"{where}: invalid YAML: {problem}"]) from None
    if raw is None:
        raise StudyError([f"{path}: the study file is empty; it needs at least `name: ...`"])
    if not isinstance(raw, dict):
        raise StudyError([f"{path}: a study file must be a mapping of keys (name, dataset, model, ...), got {type(raw).__name__}"])
    return raw


def check_values(tree: Any, where: str) -> list[str]:
    """Problems of a parsed study that the schema cannot check safely, as 'where: key: what' lines: more than
    MAX_VALUES values once YAML aliases are expanded, self-reference, deep nesting, non-finite floats, integers
    beyond 64 bits and NUL characters (which no path can hold)."""
    problems: list[str] = []
    stack: list[tuple[Any, str, tuple[int, ...]]] = [(tree, "", ())]  # value, dotted key, ids of its containers
    count = 0
    while stack and len(problems) < 20:
        value, key, above = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return [f"{where}: {key.split('.')[0] or '<top level>'}: the study expands to more than {MAX_VALUES} "
                    "values (YAML aliases repeating a large block?)"]
        if isinstance(value, (dict, list)):
            if id(value) in above:
                problems.append(f"{where}: {key}: refers to itself (a recursive YAML alias)")
            elif len(above) >= MAX_DEPTH:
                problems.append(f"{where}: {key}: nested more than {MAX_DEPTH} levels deep")
            else:
                items = value.items() if isinstance(value, dict) else enumerate(value)
                children = [(child, f"{key}.{k}" if key else str(k), (*above, id(value))) for k, child in items]
                stack += reversed(children)  # depth first, in file order
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {key}: must be a finite number (got {value})")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            problems.append(f"{where}: {key}: out of range: integers must lie within +-(2**63 - 1) "
                            f"(got {_short(value)})")
        elif isinstance(value, str) and "\0" in value:
            problems.append(f"{where}: {key}: contains a NUL character ({_short(value)})")
    return problems


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
                problems.append(f"{key}: unusable path {_short(str(value))} ({exc.strerror})")
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


def _slug(swept: dict[str, Any]) -> str:
    if not swept:
        return "base"
    parts = []
    for key, value in swept.items():
        if isinstance(value, dict) and key.split(".")[0] not in TRIAL_SECTIONS:  # linked set: its first value names it
            parts.append(f"{key}={next(iter(value.values()))}")
        elif isinstance(value, dict):
            parts += [f"{str(k).split('.')[-1]}={v}" for k, v in value.items()]
        else:
            text = json.dumps(value, default=str) if isinstance(value, list) else str(value)
            parts.append(f"{key.split('.')[-1]}={text}")
    return re.sub(r"[^A-Za-z0-9=_.,/-]+", "", ",".join(parts))[:120]


# --- trial identity ------------------------------------------------------------------------------
# A trial is what it learns from: its data, model, objective and optimiser settings and its seed.  Every
# key of a trial's config is identity except the ones below, grouped by what a change of them does to a
# trial that exists already (`orchestrator.runner` acts on the groups; README "Extending and growing a
# study" lists them).  A key is matched with its sub-keys (`eval` covers `eval.metric`, ...); the most
# specific entry wins.  A new config key is identity until it is listed here.
#
# No training schedule depends on the total number of steps (the learning rates are constant, the EMA
# warm-up and the MNG levels depend on the current step only), so the first N steps of a longer trial are
# the steps of a shorter one: that is what makes `train.steps` a length and not an identity.  A schedule
# tied to the total (a warm-up or a decay over `train.steps`) would make `train.steps` identity.
LENGTH, EVALUATION, BOOKKEEPING = "length", "evaluation", "bookkeeping"
NOT_IDENTITY: dict[str, str] = {
    # length: raising it continues a finished trial from its last checkpoint; lowering it is refused
    "train.steps": LENGTH,
    "train.flops_budget": LENGTH,  # it only sets train.steps
    # evaluation: a change re-scores a finished trial's saved model (its final evaluation and health verdict)
    "eval": EVALUATION,  # metric, extra_metrics, final_samples, diversity, health thresholds, weights, ...
    "train.diffusion.sampler": EVALUATION,  # how a DiT is sampled, not how it learns
    "train.diffusion.sample_steps": EVALUATION,
    "train.diffusion.eval_nfe": EVALUATION,
    "train.diffusion.guidance": EVALUATION,
    # bookkeeping: a change retrains and re-scores nothing; it applies to steps trained from now on
    "eval.interval": BOOKKEEPING,
    "eval.num_samples": BOOKKEEPING,  # samples of the in-training evaluations
    "eval.grid_size": BOOKKEEPING,
    "eval.batch_size": BOOKKEEPING,  # memory, not the score
    "train.log_every": BOOKKEEPING,
    "train.checkpoint_every": BOOKKEEPING,
    "train.device": BOOKKEEPING,
    "train.compile": BOOKKEEPING,  # the same computation, compiled
    "train.grad_checkpoint": BOOKKEEPING,  # the same computation, activations recomputed
    "train.collapse_loss_d": BOOKKEEPING,  # early stops of diverging trials: monitoring, not learning
    "train.collapse_diversity": BOOKKEEPING,
    "train.collapse_patience": BOOKKEEPING,
}


def key_role(key: str) -> str:
    """'identity', or the NOT_IDENTITY group of a dotted config key (its most specific entry)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        role = NOT_IDENTITY.get(".".join(parts[:end]))
        if role is not None:
            return role
    return "identity"


def param_text(value: Any) -> str:
    """A config value as the child run's MLflow param holds it (lists and mappings as JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def swept_keys(swept: dict[str, Any]) -> list[str]:
    """The dotted trial keys a grid point sets (linked sets and section mappings expanded)."""
    keys: list[str] = []
    for key, value in swept.items():
        if not isinstance(value, dict):
            keys.append(key)
        elif key.split(".")[0] in TRIAL_SECTIONS:  # `model: [{width: 96, heads: 4}, ...]`
            keys += [f"{key}.{k}" for k in value]
        else:  # a named linked set: its entries are dotted keys already
            keys += [str(k) for k in value]
    return keys


def _overlapping(key: str, others: list[str]) -> bool:
    return any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in others)


def identity_items(config: TrialConfig, swept: dict[str, Any] | None = None) -> dict[str, str]:
    """The dotted keys and values (as param text) a trial's id hashes: its identity keys, and every key its
    grid point sweeps whatever its group (two grid points are two trials: an isoFLOP study's budgets, a grid
    over `train.steps`)."""
    set_by_grid = swept_keys(swept or {})
    return {key: param_text(value) for key, value in sorted(flatten(config.model_dump(mode="json")).items())
            if key_role(key) == "identity" or _overlapping(key, set_by_grid)}


def trial_hash(config: TrialConfig, swept: dict[str, Any] | None = None) -> str:
    """Stable id of a trial: a hash of `identity_items`, so the same trial keeps its id when its length or
    its bookkeeping changes."""
    canonical = json.dumps(identity_items(config, swept), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def legacy_trial_hash(config: TrialConfig) -> str:
    """The id gat-study gave a trial before identity keys existed: a hash of its whole config."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def evaluation_items(values: dict[str, Any]) -> dict[str, str]:
    """The evaluation keys (and values as param text) of a flattened trial config, or of a child run's
    params: the settings a finished trial is scored under."""
    return {k: param_text(v) for k, v in sorted(values.items()) if key_role(k) == EVALUATION}


@functools.cache
def _default_items() -> dict[str, str]:
    return {k: param_text(v) for k, v in flatten(TrialConfig().model_dump(mode="json")).items()}


def _matches(items: dict[str, str], recorded: dict[str, str]) -> bool:
    """Every item equal to its recorded value; a key not recorded (an option added to gat-study since)
    counts as equal when the item has that option's default."""
    defaults = _default_items()
    return all((recorded[key] if key in recorded else defaults.get(key)) == text for key, text in items.items())


def same_identity(trial: Trial, params: dict[str, str]) -> bool:
    """Whether a child run's params (the flattened config it was created with) hold this trial's identity."""
    return _matches(identity_items(trial.config, trial.swept), params)


def same_evaluation(trial: Trial, scored_under: dict[str, str]) -> bool:
    """Whether a finished trial scored under `scored_under` (evaluation items) needs no re-score for `trial`."""
    return _matches(evaluation_items(trial.params()), scored_under)


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read, override, validate and expand a study; raises StudyError listing every problem."""
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
        try:
            trial_cfg = TrialConfig.model_validate(absolute_paths(tree, cwd))
        except ValidationError as exc:
            label = ", ".join(f"{k}={_short(v)}" for k, v in point.items()) or "base config"
            problems += [f"{line} [grid point {index}: {label}]" for line in _format_errors(exc, where)]
            continue
        problems += [f"{where}: {line}" for line in
                     path_problems(trial_cfg) or data_problems(trial_cfg) or missing_weights(trial_cfg)]
        workers = config.resources.workers
        if trial_cfg.train.batch_size % workers:
            problems.append(f"{where}: train.batch_size: {trial_cfg.train.batch_size} does not split over "
                            f"resources.workers = {workers} data-parallel workers [grid point {index}: {_slug(point)}]")
        trial_id = trial_hash(trial_cfg, point)
        if trial_id in seen:
            problems.append(f"{where}: grid: grid points {seen[trial_id]} and {index} give the same trial ({_slug(point)})")
            continue
        seen[trial_id] = index
        trials.append(Trial(trial_id=trial_id, name=_slug(point), index=index, swept=point, config=trial_cfg))
    if problems:
        raise StudyError(sorted(set(problems), key=problems.index))
    return Study(config=config, source=str(path), raw=raw, trials=trials)
