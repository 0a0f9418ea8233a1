"""Registry of subjects, checks and fixes.

Built-ins register exactly like plugins: with the decorators below, imported from the built-in
packages first, then from the entry-point groups `modeldoctor.subjects`, `modeldoctor.checks` and
`modeldoctor.fixes`, then from `--plugin FILE_OR_MODULE`.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from .errors import InputError

SUBJECTS: dict[str, Callable[[dict], Any]] = {}
CHECKS: dict[str, Any] = {}
FIXES: dict[str, Any] = {}

BROKEN_PLUGINS: dict[str, str] = {}  # entry-point name -> why it failed to load
_GROUPS = {"modeldoctor.subjects": SUBJECTS, "modeldoctor.checks": CHECKS, "modeldoctor.fixes": FIXES}
_BUILTINS = ("modeldoctor.checks", "modeldoctor.fixes", "modeldoctor.samples")
_loaded = False


def register_subject(name: str):
    """Decorator: `@register_subject("my-model")` on a factory `config -> Subject`."""

    def decorate(factory):
        SUBJECTS[name] = factory
        return factory

    return decorate


def register_check(cls):
    """Class decorator for a Check subclass; its `slug` is the registered name."""
    CHECKS[cls.slug] = cls
    return cls


def register_fix(cls):
    """Class decorator for a Fix subclass; its `slug` is the registered name."""
    FIXES[cls.slug] = cls
    return cls


def load_plugins() -> None:
    """Import the built-ins, then every installed entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTINS:
        importlib.import_module(module)
    for group, table in _GROUPS.items():
        for entry in entry_points(group=group):
            try:
                loaded = entry.load()
            except Exception as error:  # a broken third-party plugin must not break the tool
                BROKEN_PLUGINS[entry.name] = f"{entry.value}: {type(error).__name__}: {error}"
                warnings.warn(f"modeldoctor: plugin entry point {entry.name!r} ({entry.value}) failed to load: {error}", stacklevel=2)
                continue
            if inspect.ismodule(loaded) or entry.name in table:
                continue  # importing it registered it
            if group == "modeldoctor.subjects":
                table[entry.name] = loaded
            else:
                table[getattr(loaded, "slug", entry.name)] = loaded


def load_plugin(spec: str) -> None:
    """`--plugin FILE_OR_MODULE`: import a .py file or a dotted module so its decorators run."""
    load_plugins()
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise InputError(f"plugin file not found: {spec}")
            # The resolved path in the name keeps two plugin files with one file name apart.
            name = f"modeldoctor_plugin_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except InputError:
        raise
    except ModuleNotFoundError as error:
        raise InputError(f"plugin module not found: {spec} ({error})") from error
    except Exception as error:
        raise InputError(f"plugin {spec} failed to import: {type(error).__name__}: {error}") from error


def _lookup(table: dict, kind: str, name: str):
    load_plugins()
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise InputError(f"unknown {kind} {name!r} (known: {known})")
    return table[name]


def get_subject_factory(name: str) -> Callable[[dict], Any]:
    return _lookup(SUBJECTS, "subject", name)


def get_check(slug: str):
    return _lookup(CHECKS, "check", slug)


def get_fix(slug: str):
    return _lookup(FIXES, "fix", slug)


def build_subject(name: str, config: dict | None = None):
    """Build a fresh Subject from a registered factory."""
    factory = get_subject_factory(name)
    try:
        subject = factory(dict(config or {}))
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"subject {name!r} could not be built from its config: {type(error).__name__}: {error}") from error
    subject.name = name
    subject.validate()  # a capability naming a module the model lacks is the factory's input error
    return subject
