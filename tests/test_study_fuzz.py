"""Property-based fuzzing of study files: bad input gives a StudyError naming the file and the key, never a crash.

Three families of input, all derived from the schema: arbitrary YAML values, one-key mutations of a valid
study (wrong types, unknown keys, deleted keys, odd grids) and raw bytes.  For each, `load_study` returns a
`Study` or raises `StudyError` whose lines name the file (and, for mutations, the mutated key), and
`gat-study plan` exits 0 or 2 without a traceback.  Runs are derandomized and database-less (reproducible
in CI); `GAT_FUZZ_EXAMPLES=2000 GAT_FUZZ_RANDOM=1` fuzzes longer, on fresh examples, locally.
"""

from __future__ import annotations

import io
import os
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gat_core.config import TrialConfig
from orchestrator.cli import main
from orchestrator.study import TRIAL_SECTIONS, Study, StudyConfig, StudyError, flatten, load_study, read_yaml
from tests.helpers import tiny_study

EXAMPLES = int(os.environ.get("GAT_FUZZ_EXAMPLES", "120"))
DERANDOMIZE = not os.environ.get("GAT_FUZZ_RANDOM")  # reproducible unless asked for fresh examples
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ROOT = Path(__file__).resolve().parent.parent

# --- strategies ------------------------------------------------------------------------------------------------

SCHEMA_KEYS = sorted({*StudyConfig.model_fields, *flatten(TrialConfig().model_dump()),
                      *(k.split(".")[-1] for k in flatten(TrialConfig().model_dump())),
                      "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "uri", "experiment"})
WORDS = ["shapes", "folder", "digits", "exp", "off", "linear", "gat", "dit", "GAT-S/2", "DiT-B/4", "fd_classifier",
         "fid", "kid_", "flip", "width", "auto", "cpu", "", " ", "~", "null", "1e400", "0x10", "a\0b", "é€😀",
         "x" * 300, "/" + "y" * 300, "-", ": ", "{", "&a", "*a"]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10_000), st.integers(),
    st.integers(2**63 - 2, 2**300) | st.integers(-(2**300), -(2**63) + 2),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308]),
    text, st.sampled_from(WORDS), st.sampled_from(SCHEMA_KEYS),
)
keys = st.one_of(st.sampled_from(SCHEMA_KEYS), text, st.integers(-3, 3), st.none(), st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=16)
# a top-level mapping that mostly uses the schema's own keys, so the fuzzer reaches the deeper validators
schema_shaped = st.dictionaries(st.sampled_from(list(StudyConfig.model_fields)) | keys,
                                st.dictionaries(st.sampled_from(SCHEMA_KEYS) | keys, values, max_size=5) | values,
                                max_size=8)


def valid_study(out: Path) -> dict[str, Any]:
    """A valid study using every section, list fields, and all three kinds of grid entry (4 trials)."""
    spec = tiny_study("fuzz", out, augment=["flip"], diffusion={"objective": "ddpm", "eval_nfe": [1, 2]})
    spec["eval"]["extra_metrics"] = ["kid_classifier"]
    spec["tracking"] = {"uri": None, "experiment": "fuzz"}
    spec["grid"] = {"model.width": [32, 48], "model": [{"depth": 4, "heads": 2}],
                    "seeds": [{"train.seed": 0, "eval.interval": 3}, {"train.seed": 1, "eval.interval": 2}]}
    return spec


def quickstart(out: Path) -> dict[str, Any]:
    return {**yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text()), "output_dir": str(out)}


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict/list tree, parents before children."""
    found = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        found += paths(value, (*prefix, key))
    return found


def get(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def named_key(path: tuple) -> str:
    """The dotted key an error about `path` must name: a grid entry's own key, else the dict keys joined."""
    if path[0] == "grid" and len(path) >= 4:  # inside one grid entry: its dotted key, or the linked set's name
        grid_key, inner = path[1], ".".join(str(p) for p in path[3:] if isinstance(p, str))
        if not inner:
            return grid_key
        return f"{grid_key}.{inner}" if grid_key.split(".")[0] in TRIAL_SECTIONS else inner
    if path[0] == "grid" and len(path) == 3:
        return path[1]
    return ".".join(str(p) for p in path if isinstance(p, str))


def wrong_kind(valid: Any) -> st.SearchStrategy:
    """Values no field holding `valid` accepts: the wrong container or a scalar of the wrong type."""
    containers = st.lists(st.integers(0, 3), min_size=1, max_size=3) | st.dictionaries(
        st.sampled_from(["zz", "x.y"]), st.integers(0, 3), min_size=1, max_size=2)
    if isinstance(valid, dict):
        return st.lists(st.integers(), min_size=1, max_size=3) | st.integers() | st.sampled_from(["many", "x: 1"])
    if isinstance(valid, list):
        return st.dictionaries(st.sampled_from(["zz", "x.y"]), st.integers(), min_size=1) | st.integers() | st.floats()
    if isinstance(valid, bool):
        return containers | st.sampled_from(["maybe", 7, 2.5])
    if isinstance(valid, (int, float)):
        return containers | st.sampled_from(["many", "two", "1,5"])
    return containers  # strings, None, paths


# --- the properties --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(folder: Path, data: Any) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def load_or_error(path: Path, overrides: list[str] | None = None) -> Study | StudyError:
    """The property: a Study, or a StudyError every line of which names where the problem is."""
    try:
        study = load_study(path, overrides)
    except StudyError as exc:
        assert exc.problems, "a StudyError without problems"
        for line in exc.problems:
            where = "--set" if line.startswith("--set") else str(path)
            assert line.startswith(where), line
            assert ": " in line[len(where):], line  # then the key (or line:column), then what was expected
            assert len(line) < 2000, f"error line of {len(line)} characters"
        return exc
    assert isinstance(study, Study) and study.trials
    return study


def plan_exits_cleanly(path: Path) -> int:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["plan", str(path)])
    assert code in (0, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert (code == 0) == out.getvalue().startswith("study ")  # the plan, or nothing
    if code == 2:
        assert str(path) in err.getvalue()
    return code


@FUZZ
@given(data=values)
def test_arbitrary_yaml_values(workdir, data):
    load_or_error(write(workdir, data))


@FUZZ
@given(data=schema_shaped)
def test_arbitrary_values_under_schema_keys(workdir, data):
    load_or_error(write(workdir, {"name": "fuzz", **data} if "name" not in data else data))


@FUZZ
@given(data=st.data(), base=st.sampled_from([valid_study, quickstart]))
def test_a_wrong_kind_of_value_anywhere_is_named(workdir, data, base):
    spec = base(workdir / "out")
    path = data.draw(st.sampled_from(paths(spec)), label="path")
    valid = get(spec, path)
    if path == ("grid",) or (path[0] == "grid" and len(path) == 3 and isinstance(valid, dict)):
        return  # a grid of dicts and a linked set are checked below
    new = data.draw(wrong_kind(valid), label="value")
    get(spec, path[:-1])[path[-1]] = new
    result = load_or_error(write(workdir, spec))
    assert isinstance(result, StudyError), f"{path} = {new!r} was accepted"
    assert named_key(path) in str(result), (named_key(path), result.problems)


@FUZZ
@given(data=st.data(), base=st.sampled_from([valid_study, quickstart]))
def test_any_value_anywhere(workdir, data, base):
    """Out-of-range numbers, odd strings, nested junk: a Study or a StudyError, and plan never crashes."""
    spec = base(workdir / "out")
    path = data.draw(st.sampled_from(paths(spec)), label="path")
    get(spec, path[:-1])[path[-1]] = data.draw(values, label="value")
    file = write(workdir, spec)
    load_or_error(file)
    plan_exits_cleanly(file)


@FUZZ
@given(data=st.data(), base=st.sampled_from([valid_study, quickstart]))
def test_unknown_keys_are_named(workdir, data, base):
    spec = base(workdir / "out")
    mappings = [()] + [p for p in paths(spec) if isinstance(get(spec, p), dict)]
    where = data.draw(st.sampled_from(mappings), label="where")
    key = "zz" + data.draw(st.text("abcxyz_", max_size=5), label="key")
    get(spec, where)[key] = data.draw(scalars, label="value")
    result = load_or_error(write(workdir, spec))
    assert isinstance(result, StudyError), f"unknown key {where + (key,)} was accepted"
    if where and where[0] == "grid" and len(where) == 3:  # a key added to one grid entry
        expected = f"{where[1]}.{key}" if where[1].split(".")[0] in TRIAL_SECTIONS else where[1]
    else:
        expected = ".".join(str(p) for p in (*where, key) if isinstance(p, str))
    raw_path = ".".join(str(p) for p in (*where, key))  # a bad value (nan, NUL, ...) is named where it sits
    assert expected in str(result) or raw_path in str(result), (expected, result.problems)


@FUZZ
@given(data=st.data(), base=st.sampled_from([valid_study, quickstart]))
def test_deleted_keys(workdir, data, base):
    spec = base(workdir / "out")
    path = data.draw(st.sampled_from(paths(spec)), label="path")
    del get(spec, path[:-1])[path[-1]]
    result = load_or_error(write(workdir, spec))
    if path in (("name",), ("train", "steps")):
        assert isinstance(result, StudyError) and ".".join(path) in str(result), result


grid_entries = st.one_of(
    st.lists(st.integers(8, 96), max_size=4),  # a sweep of widths, maybe empty
    st.lists(st.dictionaries(st.sampled_from(["width", "heads", "depth", "zz"]), st.integers(1, 64), max_size=3),
             max_size=3),  # dict entries
    scalars,  # not a list
)


@FUZZ
@given(data=st.data(), grid_key=st.sampled_from(["model.width", "model", "train.seed", "resources.cpus_per_trial",
                                                 "family", "zz"]))
def test_odd_grids(workdir, data, grid_key):
    spec = valid_study(workdir / "out")
    entries = data.draw(grid_entries, label="entries")
    spec["grid"] = {grid_key: entries}
    result = load_or_error(write(workdir, spec))
    if not isinstance(entries, list) or not entries:
        assert isinstance(result, StudyError) and f"grid.{grid_key}" in str(result), result


@FUZZ
@given(sets=st.lists(st.dictionaries(st.sampled_from(["train.seed", "train.lr", "model.width", "eval.interval"]),
                                     st.integers(1, 64), max_size=4), min_size=1, max_size=4),
       widths=st.lists(st.sampled_from([32, 48, 64]), min_size=1, max_size=3))
def test_linked_sets_of_mismatched_keys(workdir, sets, widths):
    """Linked sets whose entries change different keys (or none) next to a plain sweep."""
    spec = valid_study(workdir / "out")
    spec["grid"] = {"family": sets, "model.width": widths}
    result = load_or_error(write(workdir, spec))
    if any(not entry for entry in sets):
        assert isinstance(result, StudyError) and "grid.family" in str(result), result


@FUZZ
@given(raw=st.binary(max_size=300))
def test_raw_bytes(workdir, raw):
    path = workdir / "study.yaml"
    path.write_bytes(raw)
    load_or_error(path)


JUNK = [b"\t", b":", b"- ", b"{", b"]", b"&a ", b"*a", b"!!", b"\x00", b"\xff", b"\xc3", b"\n  ", b"'", b'"', b"%",
        b"@", b"? ", b"<<: *a", b"\r"]


@FUZZ
@given(data=st.data())
def test_corrupted_valid_yaml(workdir, data):
    """Insert, drop or replace a few characters of a valid file: tabs, YAML syntax, control and non-UTF-8 bytes."""
    raw = bytearray((ROOT / "studies" / "quickstart.yaml").read_bytes())
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(0, len(raw)), label="at")
        junk = data.draw(st.sampled_from(JUNK), label="junk")
        drop = data.draw(st.integers(0, 3), label="drop")
        raw[at:at + drop] = junk
    path = workdir / "study.yaml"
    path.write_bytes(bytes(raw))
    load_or_error(path)
    plan_exits_cleanly(path)


@FUZZ
@given(key=st.sampled_from(SCHEMA_KEYS) | st.text(max_size=12), value=st.text(max_size=20) | st.sampled_from(WORDS))
def test_fuzzed_overrides(workdir, key, value):
    path = write(workdir, valid_study(workdir / "out"))
    load_or_error(path, [f"{key}={value}"])


@settings(max_examples=max(10, EXAMPLES // 4), deadline=None, derandomize=DERANDOMIZE, database=None)
@given(data=values | schema_shaped)
def test_plan_never_prints_a_traceback(workdir, data):
    plan_exits_cleanly(write(workdir, data))


# --- fixed cases and regressions of the bugs the fuzzing found ----------------------------------------------------

BILLION_LAUGHS = "name: bomb\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("where", ["grid: {model.width: *i}", "description: *i", "dataset: *i", "model: {width: *i}"])
def test_billion_laughs_is_refused_quickly(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS + where + "\n")
    start = time.monotonic()
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert time.monotonic() - start < 5
    assert "expands to more than" in str(info.value) and str(path) in str(info.value)


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\ndataset: &a {name: shapes, more: *a}\n")
    with pytest.raises(StudyError, match=r"dataset\.more: refers to itself"):
        load_study(path)


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"), (b"# only a comment\n", "empty"), (b"name: caf\xe9\n", ":1:10: not UTF-8 text (byte 0xe9)"),
    (b"name: x\nmodel:\n\twidth: 32\n", ":3:1: invalid YAML: a tab where YAML expects spaces"),
    (b"name: x\nseed: 2001-02-30\n", ":2:7: invalid YAML: cannot read 2001-02-30 as a YAML timestamp"),
    (b"name: x\nsteps: !!int many\n", ":2:8: invalid YAML: cannot read many as a YAML int"),
    (b"name: x\nsteps: !!timestamp soon\n", "invalid YAML: cannot read soon as a YAML timestamp"),
    (b"name: x\nsteps: " + b"1" * 5000 + b"\n", "invalid YAML: cannot read 1111111111"),
    (b"name: x\ngrid: " + b"[" * 2000 + b"]" * 2000 + b"\n", "nested too deeply"),
])
def test_unreadable_files_name_file_and_position(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(path) in str(info.value) and words in str(info.value), info.value.problems


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(StudyError, match="cannot read study file"):
        load_study(tmp_path)
    with pytest.raises(StudyError, match="cannot read study file"):
        load_study(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"train": {"flops_budget": float("inf")}}, "train.flops_budget", "finite number"),
    ({"train": {"steps": 10, "r1_gamma": float("nan")}}, "train.r1_gamma", "finite number"),
    ({"train": {"steps": 10**400}}, "train.steps", "out of range"),
    ({"output_dir": "runs/a\0b"}, "output_dir", "NUL character"),
    ({"dataset": {"name": "shapes", "latents": "x\0"}}, "dataset.latents", "NUL character"),
    ({"eval": {"reference_stats": "a" * 5000}}, "eval.reference_stats", "File name too long"),
])
def test_values_that_used_to_crash(tmp_path, change, key, words):
    spec = {**tiny_study("fuzz", tmp_path / "out"), **change}
    result = load_or_error(write(tmp_path, spec))
    assert isinstance(result, StudyError), key
    assert any(line.startswith(f"{tmp_path / 'study.yaml'}: {key}: ") and words in line
               for line in result.problems), result.problems
    assert plan_exits_cleanly(tmp_path / "study.yaml") == 2


def test_a_grid_too_large_to_expand_is_refused(tmp_path):
    spec = tiny_study("fuzz", tmp_path / "out")
    spec["grid"] = {"train.seed": list(range(100)), "train.lr": [1e-4 * (i + 1) for i in range(10)],
                    "train.beta1": [0.1 * i for i in range(10)], "model.width": [32, 48]}
    start = time.monotonic()
    result = load_or_error(write(tmp_path, spec))
    assert time.monotonic() - start < 5
    assert isinstance(result, StudyError) and "grid: 20000 grid points" in str(result), result


def test_huge_reprs_are_shortened(tmp_path):
    spec = {**tiny_study("fuzz", tmp_path / "out"), "dataset": [list(range(1000))] * 50}
    result = load_or_error(write(tmp_path, spec))
    assert isinstance(result, StudyError) and len(str(result)) < 500, str(result)[:1000]


def test_yaml_special_values_in_overrides(tmp_path):
    path = write(tmp_path, tiny_study("fuzz", tmp_path / "out"))
    with pytest.raises(StudyError, match=r"--set train.seed=2001-02-30: value is not valid YAML"):
        load_study(path, ["train.seed=2001-02-30"])
    with pytest.raises(StudyError, match=r"train.lr: must be a finite number"):
        load_study(path, ["train.lr=.nan"])


def test_read_yaml_keeps_a_byte_order_mark_working(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: x\n".encode())
    assert read_yaml(path) == {"name": "x"}
