"""The workflow's configuration: the shipped files, and the one check every run goes through.

:func:`check_config` is called by ``kits workflow`` before Snakemake starts and again by the Snakefile (so a
direct ``snakemake -s ... --configfile ...`` gets the same checks): values from Snakemake's ``--config KEY=VALUE``
(strings) are converted by the schema's types, missing keys take the schema's defaults, the schema is checked,
then what a schema cannot say (folders exist, no test case is a training case, folds and trainers fit the chain).
Every problem is one :class:`KitsInputError` line naming the key.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kits_plugins.errors import KitsInputError

WORKFLOW_DIR = Path(__file__).resolve().parent
SNAKEFILE = WORKFLOW_DIR / "Snakefile"
CONFIG_DIR = WORKFLOW_DIR / "config"
SCHEMA_FILE = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
PROFILE_DIR = WORKFLOW_DIR / "profiles"
STAGES = ("221", "222", "223")
CV_FOLDS = [0, 1, 2, 3, 4]
PATH_KEYS = ("kits_dir", "test_dir", "workdir")
#: trainers whose schedule follows KITS_EPOCHS / KITS_ITERS (kits_plugins.training.trainers)
SCHEDULE_SUFFIXES = ("_short", "_demo")


def shipped_configs() -> dict[str, Path]:
    """The configurations shipped with the package, by file name (``demo.yaml``, ``kits23.yaml``)."""
    return {p.name: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def shipped_config(name: str) -> Path:
    """A shipped configuration by name, with or without ``.yaml``."""
    configs = shipped_configs()
    key = name if name.endswith(".yaml") else f"{name}.yaml"
    if key not in configs:
        raise KitsInputError(f"no shipped configuration {name!r} (shipped: {', '.join(configs)})")
    return configs[key]


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from a file; a missing file, bad YAML or another top-level type is one error."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise KitsInputError(f"{p}: configuration file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise KitsInputError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KitsInputError(f"{p}: a configuration is a mapping of keys, got {type(data).__name__}")
    return data


def load_schema() -> dict:
    return load_yaml(SCHEMA_FILE)


# ---------------------------------------------------------------- schema helpers


def _resolve(schema: Mapping, root: Mapping) -> Mapping:
    """Follow a local ``$ref`` (``#/$defs/name``), keeping the referring schema's own keys (e.g. its default)."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def _types(schema: Mapping) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _coerce_scalar(value: str, types: list[str]) -> Any:
    """A ``--config`` string as the schema's type (Snakemake leaves values inside lists and mappings strings)."""
    low = value.strip().lower()
    if "null" in types and low in ("null", "none", "~"):
        return None
    if "boolean" in types and low in ("true", "false"):
        return low == "true"
    for kind, convert in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return convert(value)
            except ValueError:
                pass
    return value


def _choices(schema: Mapping, root: Mapping) -> list[Mapping]:
    """The alternatives of a schema (its ``oneOf`` / ``anyOf`` branches, resolved), or the schema itself."""
    schema = _resolve(schema, root)
    branches = schema.get("oneOf", schema.get("anyOf"))
    return [_resolve(s, root) for s in branches] if branches else [schema]


def coerce(value: Any, schema: Mapping, root: Mapping | None = None) -> Any:
    """``value`` with strings converted where the schema wants a number, boolean or null, and mapping keys made
    strings (YAML reads ``221:`` as an integer); everything else unchanged."""
    root = schema if root is None else root
    choices = _choices(schema, root)
    if isinstance(value, Mapping):
        obj = next((c for c in choices if "properties" in c or "additionalProperties" in c), {})
        props, extra = obj.get("properties", {}), obj.get("additionalProperties")
        return {str(k): coerce(v, props.get(str(k), extra if isinstance(extra, Mapping) else {}), root)
                for k, v in value.items()}
    if isinstance(value, list):
        items: Mapping = next((c["items"] for c in choices if "items" in c), {})
        return [coerce(v, items, root) for v in value]
    if isinstance(value, str):
        return _coerce_scalar(value, [t for c in choices for t in _types(c)])
    return value


def apply_defaults(value: Any, schema: Mapping, root: Mapping | None = None) -> Any:
    """Fill missing keys from the schema's defaults, recursively; a mapping default also fills the keys missing
    from a mapping that is given (``resources: {train: {runtime: 60}}`` keeps train's threads and mem_mb)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(value, dict):
        return value
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        default = sub.get("default")
        if key not in value:
            if "default" in sub:
                value[key] = copy.deepcopy(default)
        elif isinstance(value[key], dict) and isinstance(default, dict):
            for k, v in default.items():
                value[key].setdefault(k, copy.deepcopy(v))
        if key in value:
            value[key] = apply_defaults(value[key], sub, root)
    return value


def _where(path: list) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_error(config: Mapping, schema: Mapping) -> str | None:
    """The most relevant schema violation as one line naming the key, or None."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import relevance

    errors = list(Draft202012Validator(schema).iter_errors(config))
    if not errors:
        return None
    e = max(errors, key=relevance)
    where = _where(list(e.absolute_path))
    prefix = f"{where}: " if where else ""
    if e.validator == "additionalProperties" and isinstance(e.instance, Mapping):
        known = list(e.schema.get("properties", {}))
        unknown = [k for k in e.instance if k not in known]
        return f"{prefix}unknown key {', '.join(repr(k) for k in unknown)} (known: {', '.join(known)})"
    if e.validator == "required":
        missing = str(e.message).split("'")[1] if "'" in e.message else e.message
        return f"{prefix}missing key {missing!r}"
    if e.validator in ("oneOf", "anyOf") and "x-message" in e.schema:
        return f"{prefix}{e.instance!r} {e.schema['x-message']}"
    return f"{prefix}{e.message}"


# ---------------------------------------------------------------- the check


def case_ids(folder: Path) -> list[str]:
    """Case ids of a KiTS23-layout folder (``case_*/imaging.nii.gz``), sorted."""
    return sorted(p.parent.name for p in folder.glob("case_*/imaging.nii.gz"))


def _check_data(config: Mapping) -> None:
    if config["synthetic"] is not None:
        workdir = Path(config["workdir"])
        for key in ("kits_dir", "test_dir"):
            if workdir not in Path(config[key]).parents:
                raise KitsInputError(f"{key}: with synthetic, {config[key]} must lie inside workdir {workdir} "
                                     f"(the workflow makes it and replaces it when the settings change)")
        return
    cases = {}
    for key in ("kits_dir", "test_dir"):
        folder = Path(config[key])
        if not folder.is_dir():
            raise KitsInputError(f"{key}: {folder}: folder not found")
        cases[key] = case_ids(folder)
        if not cases[key]:
            raise KitsInputError(f"{key}: {folder}: no case_*/imaging.nii.gz (KiTS23 layout expected)")
    shared = sorted(set(cases["kits_dir"]) & set(cases["test_dir"]))
    if shared:
        raise KitsInputError(f"test_dir: {len(shared)} case(s) are also training cases in kits_dir, first {shared[0]}")


def _check_chain(config: Mapping) -> None:
    folds = config["folds"]
    if config["train_as_you_infer"]:
        if sorted(f for f in folds if f != "all") != CV_FOLDS or "all" in folds:
            raise KitsInputError(f"folds: train_as_you_infer needs the five cross-validation folds [0, 1, 2, 3, 4] "
                                 f"(every case predicted by a model that did not train on it), got {folds}")
    schedule = [k for k in ("epochs", "iterations") if config[k] is not None]
    plain = [t for t in config["trainers"].values() if not t.endswith(SCHEDULE_SUFFIXES)]
    if schedule and plain:
        raise KitsInputError(f"{schedule[0]}: only the _short and _demo trainers read KITS_EPOCHS / KITS_ITERS, "
                             f"{plain[0]} would ignore it (set it to null)")


def check_config(config: Mapping, base: str | os.PathLike | None = None) -> dict:
    """The checked configuration: a new dict with defaults filled in, stage keys as strings and ``kits_dir``,
    ``test_dir`` and ``workdir`` absolute (relative ones are read from ``base``, default the current folder).
    Raises KitsInputError with one line naming the key."""
    schema = load_schema()
    checked = apply_defaults(coerce(copy.deepcopy(dict(config)), schema), schema)
    problem = schema_error(checked, schema)
    if problem:
        raise KitsInputError(problem)
    root = Path(base) if base is not None else Path.cwd()
    for key in PATH_KEYS:
        checked[key] = str((root / os.path.expanduser(checked[key])).resolve())
    _check_data(checked)
    _check_chain(checked)
    return checked
