"""The one way to build what a run is made of (timm's ``create_model``): methods from the
registries with their preset and ``--set`` parameters, and data views. The runner, ``bench
compare``, conformance, the tests and the plugins' experiments all build through here (a
dataset's images under the run's ``--limit`` convention: :func:`bench.datasets.load_source`).

``--set METHOD[.ROLE].PARAM=VALUE`` is parsed by :func:`parse_setting` and type-checked against
the constructor's annotations (or its default's type) by :func:`coerce`, so ``k=2.7`` for an
``int`` or ``k=true`` is one error before any work starts. ``--set METHOD.preset=NAME`` picks
one of the method's named parameter sets (e.g. ``dna.preset=vdna``).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.api import PRESET_PARAM, Comparator, DataView, Summariser, check_contract_names, tags_of
from bench.errors import BenchError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from bench.datasets.base import ImageSource
    from bench.extractors.base import Extractor
    from bench.features import FeatureStore
    from bench.plugins import Registries
    from bench.registry import Registry

ROLES = ("summariser", "comparator")


# --------------------------------------------------------------------------- --set


@dataclass(frozen=True)
class Setting:
    """One ``--set``: ``method[.role].param = value`` (value as typed on the command line)."""

    method: str
    role: str | None
    param: str
    text: str

    def __str__(self) -> str:
        return f"{self.method}{'.' + self.role if self.role else ''}.{self.param}={self.text}"


def parse_setting(text: str) -> Setting:
    """``kmeans.k=20`` or ``dna.comparator.distance=nfd`` → :class:`Setting`; ONE line when malformed."""
    lhs, eq, value = text.partition("=")
    parts = lhs.split(".")
    if not eq or len(parts) not in (2, 3) or not all(parts):
        raise BenchError(f"--set takes METHOD[.ROLE].PARAM=VALUE, e.g. kmeans.k=20; got {text!r}")
    if len(parts) == 3 and parts[1] not in ROLES:
        raise BenchError(f"--set {text!r}: role must be one of {', '.join(ROLES)}, got {parts[1]!r}")
    return Setting(parts[0], parts[1] if len(parts) == 3 else None, parts[-1], value)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _annotation(cls: type, param: str) -> Any:
    """The constructor's annotation of ``param`` (resolved), else the type of its default, else Any."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: fall back to the default's type
        hints = {}
    if param in hints:
        return hints[param]
    default = inspect.signature(cls.__init__).parameters[param].default
    if default is inspect.Parameter.empty or default is None:
        return Any
    return type(default)


def _fits(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` (from JSON) is a ``tp``, the value converted: int→float, list→tuple)."""
    if tp is Any or tp is object:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, conv = _fits(value, arg)
            if ok:
                return True, conv
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number, float(value) if number else value
    if tp is str:
        return isinstance(value, str), value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, list):
            return False, value
        args = typing.get_args(tp)
        if origin is tuple and args and Ellipsis not in args:
            if len(args) != len(value):
                return False, value
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        conv = []
        for v, t in zip(value, item_types):
            ok, c = _fits(v, t)
            if not ok:
                return False, value
            conv.append(c)
        return True, tuple(conv) if (origin is tuple or tp is tuple) else conv
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return True, value   # a type we do not model: the method's own check_params decides


def _type_name(tp: Any) -> str:
    text = str(tp).replace("typing.", "")
    return tp.__name__ if isinstance(tp, type) else text


def coerce(cls: type, param: str, text: str, *, method: str) -> Any:
    """The value of ``--set method.param=text`` for ``cls``'s constructor, or ONE line saying why not."""
    valid = cls._param_names()
    if param not in valid:
        raise BenchError(f"--set {method}.{param}: unknown parameter {param!r} of {method}; "
                         f"valid parameters: {', '.join(sorted(valid))}")
    tp = _annotation(cls, param)
    value = _json_or_text(text)
    ok, conv = _fits(value, tp)
    if not ok and text.lower() in ("none", "null"):
        ok, conv = _fits(None, tp)
    if not ok and not isinstance(value, str):
        ok, conv = _fits(text, tp)    # "--set dna.distance=1e3"-style text for a str parameter
    if not ok:
        raise BenchError(f"--set {method}.{param}={text}: expected {_type_name(tp)}, got {text!r}")
    return conv


def resolve_settings(regs: Registries, settings: list[Setting], methods: list[str]
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """``--set`` values per method and role ({method: {role: {param: value}}}), type-checked.

    A setting without a role goes to every role of the method that has the parameter (``dna.distance``
    is the comparator's); one that no role has is an error. ``METHOD[.ROLE].preset=NAME`` expands a
    named preset (:attr:`bench.api.Tags.presets`) into its parameters first, so any other ``--set``
    of the method overrides it whatever the order on the command line."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    # stable: presets first, everything else in command-line order
    for given in sorted(settings, key=lambda s: s.param != PRESET_PARAM):
        s = _renamed(regs, given)
        if s.method not in methods:
            raise BenchError(f"--set names method {s.method!r}, which is not in --methods {','.join(methods)}")
        classes = method_classes(regs, s.method)
        if s.role is not None and s.role not in classes:
            raise BenchError(f"--set {s}: {s.method} has no {s.role} role (it has: {', '.join(classes)})")
        if s.param == PRESET_PARAM and not any(PRESET_PARAM in cls._param_names() for cls in classes.values()):
            for role, values in preset_params(classes, s).items():
                out.setdefault(s.method, {}).setdefault(role, {}).update(values)
            continue
        roles = [s.role] if s.role else [r for r, cls in classes.items() if s.param in cls._param_names()]
        if not roles:   # no role has it: let coerce name the valid parameters of the first role
            roles = [next(iter(classes))]
        for role in roles:
            out.setdefault(s.method, {}).setdefault(role, {})[s.param] = coerce(
                classes[role], s.param, s.text, method=s.method)
    return out


def _renamed(regs: Registries, s: Setting) -> Setting:
    """A setting of a renamed parameter (class attribute ``renamed_params``), with a deprecation line."""
    if s.method not in regs.summarisers and s.method not in regs.comparators:
        return s
    renamed = {k: v for cls in method_classes(regs, s.method).values()
               for k, v in getattr(cls, "renamed_params", {}).items()}
    if s.param not in renamed:
        return s
    logging.getLogger("bench").warning("--set %s.%s is deprecated: the parameter is now %r",
                                       s.method, s.param, renamed[s.param])
    return Setting(s.method, s.role, renamed[s.param], s.text)


def preset_params(classes: dict[str, type], setting: Setting) -> dict[str, dict[str, Any]]:
    """{role: parameters} of the preset ``setting`` names, for its role or every role that has it."""
    name = _json_or_text(setting.text)
    roles = [setting.role] if setting.role else list(classes)
    presets = {r: tags_of(classes[r]).presets for r in roles}
    found = {r: copy.deepcopy(p[name]) for r, p in presets.items() if isinstance(name, str) and name in p}
    if not found:
        known = sorted({k for p in presets.values() for k in p})
        raise BenchError(f"--set {setting}: {setting.method} has no preset {setting.text!r}; "
                         + (f"presets: {', '.join(known)}" if known else "it has no named presets"))
    return found


# --------------------------------------------------------------------------- methods


def method_classes(regs: Registries, name: str) -> dict[str, type]:
    """{role: class} of a method name (summariser and/or comparator); unknown names suggest the closest."""
    classes = {role: registry.get(name) for role, registry in
               (("summariser", regs.summarisers), ("comparator", regs.comparators)) if name in registry}
    if not classes:
        from bench.plugins import method_names

        raise UnknownNameError("method", name, method_names(regs))
    return classes


def create_method(regs: Registries, name: str, *, preset: str = "paper",
                  params: dict[str, dict[str, Any]] | None = None) -> dict[str, Summariser | Comparator]:
    """{role: method object} for ``name``: defaults (or ``quick_params`` for ``preset="quick"``),
    then ``params`` per role (as :func:`resolve_settings` returns), then the method's ``check_params``."""
    if preset not in ("paper", "quick"):
        raise BenchError(f"preset must be paper or quick, got {preset!r}")
    roles: dict[str, Summariser | Comparator] = {}
    for role, cls in method_classes(regs, name).items():
        obj = cls()
        check_contract_names(cls, obj)
        if preset == "quick":
            obj.set_params(**tags_of(cls).quick_params)
        obj.set_params(**(params or {}).get(role, {}))
        obj.check_params()
        roles[role] = obj
    return roles


# --------------------------------------------------------------------------- data


def create_view(source: ImageSource, extractor: Extractor, store: FeatureStore | None = None, *,
                device: torch.device | str = "cpu", batch_size: int = 64, progress: bool = False,
                artefact_dir: Path | None = None, experts: Registry | None = None) -> DataView:
    """A :class:`DataView` (an in-memory feature store when none is given)."""
    from bench.features import FeatureStore

    return DataView(source, extractor, store if store is not None else FeatureStore(None), device=device,
                    batch_size=batch_size, progress=progress, artefact_dir=artefact_dir, experts=experts)
