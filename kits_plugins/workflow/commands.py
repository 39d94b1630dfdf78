"""``kits workflow`` and ``kits workflow-path``: the cascade as a Snakemake workflow (docs/workflow.md).

``kits workflow`` is a thin wrapper over Snakemake's own command line: it checks the configuration (with the
``--config KEY=VALUE`` overrides given after ``--``) before anything starts, prints the ``snakemake`` command and
runs it; the arguments after ``--`` go to Snakemake unchanged. Snakemake is imported only when a workflow runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.staging import pid_alive


def add_workflow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path,
                        help="configuration YAML (a file, or a shipped one by name: demo.yaml, kits23.yaml)")
    parser.add_argument("--cores", default=None,
                        help="local cores for the jobs (default: all; with --profile: the profile's)")
    parser.add_argument("--profile", default=None,
                        help="Snakemake profile: a folder, a name Snakemake looks up, or 'slurm' (the shipped one)")
    parser.add_argument("-n", "--dry-run", action="store_true", help="list the jobs that would run, run none")
    parser.add_argument("--until", nargs="+", metavar="RULE", default=None,
                        help="run only the jobs up to these rules (or output files)")
    parser.add_argument("--show-config", metavar="NAME", default=None,
                        help="print a shipped configuration (demo.yaml, kits23.yaml) and exit")
    parser.usage = "kits workflow [CONFIG] [options] [-- SNAKEMAKE_ARGS ...]"
    parser.epilog = ("Arguments after -- go to Snakemake unchanged, e.g. -- --config num_parts=8 (any configuration key) "
                     "or -- --resources gpu=1. Direct use: snakemake -s $(kits workflow-path) --configfile CONFIG.")
    parser.set_defaults(passthrough=[])


def add_workflow_path_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "usage: snakemake -s $(kits workflow-path) --configfile CONFIG.yaml --cores N"


def run_workflow_path(args: argparse.Namespace) -> int:
    from kits_plugins.workflow.config import SNAKEFILE

    print(SNAKEFILE)
    return 0


def resolve_config(path: Path) -> Path:
    """A configuration file, or a shipped one by name when no such file exists (said on stderr)."""
    from kits_plugins.workflow.config import shipped_config, shipped_configs

    names = shipped_configs()
    if path.exists() or (path.name not in names and f"{path.name}.yaml" not in names):
        return path
    shipped = shipped_config(path.name)
    print(f"kits workflow: no {path} here, using the shipped {shipped}", file=sys.stderr)
    return shipped


def resolve_profile(profile: str) -> str:
    """A profile folder; a shipped profile's name (``slurm``) when no such folder exists; else the name as given
    (Snakemake looks it up in its own profile folders)."""
    from kits_plugins.workflow.config import PROFILE_DIR

    if Path(profile).is_dir() or not (PROFILE_DIR / profile).is_dir():
        return profile
    return str(PROFILE_DIR / profile)


def config_entries(snakemake_args: list[str]) -> list[str]:
    """The ``KEY=VALUE`` entries of ``--config`` (or ``-C``) among Snakemake's arguments."""
    entries: list[str] = []
    taking = False
    for arg in snakemake_args:
        if arg in ("--config", "-C"):
            taking = True
        elif arg.startswith("-"):
            taking = False
        elif taking:
            entries.append(arg)
    return entries


def config_overrides(snakemake_args: list[str]) -> dict:
    """The ``--config KEY=VALUE ...`` (or ``-C``) overrides among Snakemake's arguments, parsed as Snakemake does."""
    entries = config_entries(snakemake_args)
    if not entries:
        return {}
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    try:
        parsed = parse_config(entries)
    except ValueError as e:
        raise KitsInputError(f"--config: {e}") from None
    out: dict = {}
    update_config(out, parsed)
    return out


def checked_config(config_file: Path, snakemake_args: list[str]) -> dict:
    """The configuration as the workflow will see it (file, then ``--config`` overrides), checked."""
    from snakemake.utils import update_config

    from kits_plugins.workflow.config import check_config, load_yaml

    config = load_yaml(config_file)
    update_config(config, config_overrides(snakemake_args))
    return check_config(config)


def snakemake_argv(config_file: Path, cores: str | None = None, profile: str | None = None, dry_run: bool = False,
                   until: list[str] | None = None, extra: list[str] | None = None) -> list[str]:
    """The ``snakemake`` command line (without the executable) that runs the workflow."""
    from kits_plugins.workflow.config import SNAKEFILE

    argv = ["--snakefile", str(SNAKEFILE), "--configfile", str(Path(config_file).resolve())]
    if cores is not None or profile is None:
        argv += ["--cores", cores or "all"]
    if profile is not None:
        argv += ["--profile", resolve_profile(profile)]
    if dry_run:
        argv.append("--dry-run")
    if until:
        argv += ["--until", *until]
    return argv + list(extra or [])


def run_snakemake(argv: list[str], cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``snakemake ARGV`` with this interpreter; returns its exit status."""
    print(f"$ snakemake {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, "-m", "snakemake", *argv], cwd=cwd,
                          env=None if env is None else {**os.environ, **env}).returncode


OWNER_FILE = ".snakemake/kits_workflow_owner.json"


def prepare_run(workdir: Path, config_file: Path, entries: list[str], cwd: str | os.PathLike | None = None) -> None:
    """Before a run (not a dry run): when a run started by ``kits`` on this host was killed outright (SIGKILL, out of
    memory, a closed session), Snakemake's lock on ``workdir`` is left behind and would stop every later run; it is
    released (``snakemake --unlock``) when its owner process is gone, and this run is recorded as the owner.
    A lock of a live run, another host's or one of a direct ``snakemake`` is left to Snakemake's own message."""
    owner_file = workdir / OWNER_FILE
    try:
        owner = json.loads(owner_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        owner = None
    host = socket.gethostname()
    if owner is not None and owner.get("host") == host and pid_alive(int(owner.get("pid", 0))):
        return  # a live run: Snakemake refuses the lock itself
    locks = list((workdir / ".snakemake" / "locks").glob("*.lock"))
    if locks and owner is not None and owner.get("host") == host:
        print(f"kits workflow: releasing the lock of a killed run (process {owner.get('pid')}) on {workdir}",
              file=sys.stderr)
        argv = ["--snakefile", snakemake_argv(config_file)[1], "--configfile", str(Path(config_file).resolve()),
                "--unlock"] + (["--config", *entries] if entries else [])
        run_snakemake(argv, cwd=cwd)
        locks = []
    if locks:
        return  # another host's run, or a direct snakemake's: Snakemake's own message if it is still held
    owner_file.parent.mkdir(parents=True, exist_ok=True)
    owner_file.write_text(json.dumps({"host": host, "pid": os.getpid()}))


def is_dry_run(dry_run: bool, extra: list[str]) -> bool:
    return dry_run or any(a in ("-n", "--dry-run", "--dryrun") for a in extra)


def run_workflow(args: argparse.Namespace) -> int:
    if args.show_config is not None:
        from kits_plugins.workflow.config import shipped_config

        print(shipped_config(args.show_config).read_text(), end="")
        return 0
    if args.config is None:
        raise KitsInputError("a configuration file is needed (kits workflow --show-config kits23.yaml > my.yaml)")
    extra = list(args.passthrough)
    config_file = resolve_config(args.config)
    config = checked_config(config_file, extra)  # one-line errors before Snakemake starts
    if not is_dry_run(args.dry_run, extra):
        prepare_run(Path(config["workdir"]), config_file, config_entries(extra))
    return run_snakemake(snakemake_argv(config_file, args.cores, args.profile, args.dry_run, args.until, extra))
