"""User configuration: where the real datasets live (never downloaded by ``bench``).

A dataset root comes from, in order:

1. the environment variable ``BENCH_<NAME>_ROOT`` (e.g. ``BENCH_IMAGENET_ROOT``);
2. ``bench.toml`` in the current directory, section ``[roots]``;
3. ``$XDG_CONFIG_HOME/bench/config.toml`` (default ``~/.config/bench/config.toml``), ``[roots]``.

Example ``bench.toml``::

    [roots]
    imagenet = "/data/ILSVRC2012"
    pass = "/data/PASS"
    cifar10 = "/data"          # the folder holding cifar-10-batches-py/

(``roots.imagenet = "/data/ILSVRC2012"`` at top level is the same TOML.) Error messages
use that bracket-free form because terminals with rich markup eat ``[roots]``.

``BENCH_CONFIG=/path/file.toml`` replaces steps 2 and 3 by one explicit file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bench.errors import BenchError

try:  # python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


def env_var(name: str) -> str:
    """``imagenet`` → ``BENCH_IMAGENET_ROOT`` (non-alphanumerics become ``_``)."""
    return f"BENCH_{re.sub(r'[^0-9A-Za-z]+', '_', name).upper()}_ROOT"


def config_files() -> list[Path]:
    """Config files consulted, most specific first (only those that exist)."""
    explicit = os.environ.get("BENCH_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BenchError(f"BENCH_CONFIG={explicit} does not name a file")
        return [path]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [p for p in (Path.cwd() / "bench.toml", xdg / "bench" / "config.toml") if p.is_file()]


def read_config(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a syntax error, bytes that are not UTF-8 or an unreadable file is
    one line naming the file."""
    if tomllib is None:  # pragma: no cover - python 3.10 without tomli
        raise BenchError(f"reading {path} needs python >= 3.11 or the 'tomli' package")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 by definition; a latin-1 é is the usual culprit
        line = 1 + open(path, "rb").read()[: e.start].count(b"\n")
        raise BenchError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); save the file "
                         "as UTF-8") from None
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror or e}") from None


def dataset_root(name: str) -> tuple[Path | None, str]:
    """The configured root of dataset ``name`` and where it came from (for messages).

    Returns ``(None, "")`` when nothing is configured. Paths get ``~`` expanded; a
    relative path in a config file is relative to that file's folder.
    """
    var = env_var(name)
    value = os.environ.get(var)
    if value:
        return Path(value).expanduser(), var
    for path in config_files():
        roots = read_config(path).get("roots", {})
        if not isinstance(roots, dict):
            raise BenchError(f"{path}: roots must be a table of name = \"path\" entries")
        if name in roots:
            root = Path(str(roots[name])).expanduser()
            if not root.is_absolute():
                root = path.parent / root
            return root, f"roots.{name} in {path}"
    return None, ""
