"""Compressors (and, through :mod:`ragpress.readers.registry`, readers) by name, from package
entry points: the CLI, the service, the batch job and the framework integrations all look methods
up here.

A package adds a method by declaring it in its ``pyproject.toml``; ragpress declares its own the
same way, so this module imports nothing from the packages that use it::

    [project.entry-points."ragpress.compressors"]
    my-method = "my_package.compressor:MyCompressor"     # a ragpress.core.compressor.Compressor

    [project.entry-points."ragpress.readers"]
    my-reader = "my_package.reader:MyReader"             # a ragpress.readers.base.Reader

Once the package is installed, ``ragpress methods`` lists it, ``ragpress serve --methods my-method``
serves it and ``create_compressor("my-method")`` builds it. A name is loaded (its module
imported) only when it is first used; :func:`available` loads them all. A plugin that cannot be
used raises a :class:`~ragpress.core.errors.PluginError` naming its package and entry point when
its name is asked for, and is left out of :func:`available` (:func:`plugin_errors` says why):
it does not import, it is not a subclass of the base class, its class says another ``name``, or
its name is taken (ragpress's own methods keep theirs; two plugins that declare the same name are
both refused). A class defined in a script or a test can be added with :func:`register`.

>>> from ragpress.core.registry import create_compressor
>>> create_compressor("truncate").name
'truncate'
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import logging
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ragpress.core.compressor import Compressor
from ragpress.core.errors import PluginError, UnknownCompressorError

__all__ = [
    "COMPRESSORS_GROUP", "READERS_GROUP", "Declaration", "Registry", "available", "compressors",
    "create_compressor", "get_compressor_class", "plugin_errors", "refresh", "register",
]

COMPRESSORS_GROUP = "ragpress.compressors"
READERS_GROUP = "ragpress.readers"
OWN = "ragpress"  # the distribution whose declarations are the built-ins

log = logging.getLogger("ragpress.plugins")
T = TypeVar("T")


@dataclass(frozen=True)
class Declaration:
    """One name declared in a group: ``value`` (``module:Class``) by the distribution ``dist``
    (``"<register>"`` for a class added in code)."""

    name: str
    value: str
    dist: str
    version: str = ""

    @property
    def builtin(self) -> bool:
        return self.dist == OWN

    def describe(self) -> str:
        package = f"{self.dist} {self.version}".strip() if self.dist != "<register>" else "register() in code"
        return f"entry point `{self.name} = {self.value}` of {package}"


class Registry(Generic[T]):
    """Classes of one kind by name, from the entry point ``group`` (and :meth:`register`).

    ``base`` returns the class every entry must subclass (called at the first load, so the module
    holding it need not be imported before); ``unknown(name, names)`` is the error for a name
    nobody declares."""

    def __init__(self, kind: str, group: str, base: Callable[[], type], unknown: Callable[[str, list[str]], Exception]):
        self.kind, self.group, self._base, self._unknown = kind, group, base, unknown
        self._lock = threading.RLock()
        self._declared: dict[str, Declaration] | None = None  # usable declarations, by name
        self._refused: dict[str, PluginError] = {}  # names nobody gets (two plugins declare them)
        self._conflicts: list[PluginError] = []  # declarations that lost their name to ragpress's own
        self._loaded: dict[str, type[T]] = {}
        self._failed: dict[str, PluginError] = {}
        self._registered: dict[str, type[T]] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ public
    def register(self, cls: type[T]) -> type[T]:
        """Add ``cls`` under ``cls.name`` (for a class defined in a script or a test; a package
        declares an entry point instead). Usable as a class decorator."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{cls!r} has no `name`: a {self.kind} class needs the name it is used by", name=name)
        self._check_base(cls, Declaration(name, f"{cls.__module__}:{cls.__qualname__}", "<register>"))
        with self._lock:
            have = self._registered.get(name) or self._loaded.get(name)
            decl = self._scan().get(name)
            value = f"{cls.__module__}:{cls.__qualname__}"
            if (have is not None and have is not cls) or (have is None and decl is not None and decl.value != value):
                by = decl.describe() if decl is not None else repr(have)
                raise PluginError(f"{self.kind} name {name!r} is already taken by {by}", name=name)
            self._registered[name] = cls
        return cls

    def names(self) -> list[str]:
        """Every usable name declared (nothing is imported to list them)."""
        with self._lock:
            return sorted((set(self._scan()) | set(self._registered)) - set(self._failed))

    def declarations(self) -> dict[str, Declaration]:
        """The usable declarations by name (what each name loads, and which package says so)."""
        with self._lock:
            return dict(self._scan())

    def get(self, name: str) -> type[T]:
        """The class declared as ``name``, imported on first use."""
        with self._lock:
            if name in self._registered:
                return self._registered[name]
            if name in self._loaded:
                return self._loaded[name]
            if name in self._failed:
                raise self._failed[name]
            decl = self._scan().get(name)
            if decl is None:
                if name in self._refused:
                    raise self._refused[name]
                raise self._unknown(name, self.names())
        try:  # imported outside the lock: a plugin module may call register() while it imports
            cls = self._load(decl)
        except PluginError as exc:
            with self._lock:
                self._failed.setdefault(name, exc)
            raise
        with self._lock:
            return self._loaded.setdefault(name, cls)

    def available(self) -> list[str]:
        """Names whose class loads (all are imported); the others are logged once and listed by
        :meth:`errors`."""
        out = []
        for name in self.names():
            try:
                self.get(name)
            except PluginError:
                continue
            out.append(name)
        for exc in self.errors():
            if exc.message not in self._warned:
                self._warned.add(exc.message)
                log.warning("%s", exc.message)
        return sorted(out)

    def errors(self) -> list[PluginError]:
        """What is wrong with the plugins seen so far (call :meth:`available` first to load all)."""
        with self._lock:
            self._scan()
            return [*self._refused.values(), *self._conflicts, *self._failed.values()]

    def refresh(self) -> None:
        """Read the installed entry points again (after installing a plugin into a running
        process); classes added with :meth:`register` stay."""
        importlib.invalidate_caches()
        with self._lock:
            self._declared, self._refused, self._conflicts = None, {}, []
            self._loaded, self._failed, self._warned = {}, {}, set()

    # ------------------------------------------------------------------ internals
    def _scan(self) -> dict[str, Declaration]:
        if self._declared is not None:
            return self._declared
        by_name: dict[str, list[Declaration]] = {}
        for d in self._entry_points():
            same = by_name.setdefault(d.name, [])
            if all(o.value != d.value for o in same):  # the same class declared twice is no conflict
                same.append(d)
        declared: dict[str, Declaration] = {}
        for name, decls in sorted(by_name.items()):
            own = [d for d in decls if d.builtin]
            if own:
                declared[name] = own[0]
                for d in decls:
                    if not d.builtin:
                        self._conflicts.append(PluginError(
                            f"{self.kind} plugin {name!r} ({d.describe()}) is ignored: ragpress's own "
                            f"{self.kind} has that name; rename it in {d.dist}'s entry points",
                            plugin=d.dist, name=name))
            elif len(decls) == 1:
                declared[name] = decls[0]
            else:
                self._refused[name] = PluginError(
                    f"{self.kind} name {name!r} is declared by more than one package ("
                    + "; ".join(d.describe() for d in decls)
                    + "): none of them is used; uninstall one, or rename it in its entry points",
                    plugin=", ".join(d.dist for d in decls), name=name)
        self._declared = declared
        return declared

    def _entry_points(self) -> list[Declaration]:
        found = []
        for ep in metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            name = dist.metadata["Name"] if dist is not None else "<unknown package>"
            found.append(Declaration(ep.name, ep.value, _normal(name) if name else "<unknown package>",
                                     dist.version if dist is not None else ""))
        if not any(d.builtin for d in found):  # ragpress not installed, or installed before its entry points
            found.extend(self._source_declarations())
        return found

    def _source_declarations(self) -> list[Declaration]:
        """ragpress's own declarations from the ``pyproject.toml`` of a source checkout, when the
        installed metadata lacks them (run from a checkout; or not reinstalled since they were
        added: ``make setup`` / ``pip install -e .`` refreshes it)."""
        path = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            project = {}
        table = project.get("entry-points", {}).get(self.group, {}) if project.get("name") == OWN else {}
        if table:
            log.info("ragpress's %s entry points are not in the installed metadata: read from %s "
                     "(reinstall, e.g. `make setup`, to refresh it)", self.group, path)
        else:
            log.warning("no %s entry points of ragpress found: is ragpress installed (pip install -e .)?", self.group)
        return [Declaration(name, value, OWN, project.get("version", "")) for name, value in table.items()]

    def _load(self, decl: Declaration) -> type[T]:
        module, _, attr = decl.value.partition(":")
        try:
            obj: Any = importlib.import_module(module.strip())
            for part in attr.strip().split(".") if attr.strip() else []:
                obj = getattr(obj, part)
        except Exception as exc:  # ImportError, a syntax error, a module that raises at import, a missing attribute
            raise PluginError(f"{self.kind} {decl.name!r} ({decl.describe()}) cannot be loaded: "
                              f"{type(exc).__name__}: {exc}", plugin=decl.dist, name=decl.name) from exc
        if not isinstance(obj, type):
            raise PluginError(f"{self.kind} {decl.name!r} ({decl.describe()}) is {type(obj).__name__} "
                              f"{obj!r}, not a class", plugin=decl.dist, name=decl.name)
        self._check_base(obj, decl)
        said = getattr(obj, "name", None)
        if said != decl.name:
            raise PluginError(f"{self.kind} {decl.name!r} ({decl.describe()}) is declared as {decl.name!r} but its "
                              f"class says name = {said!r}: make them the same", plugin=decl.dist, name=decl.name)
        return obj

    def _check_base(self, cls: type, decl: Declaration) -> None:
        base = self._base()
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{self.kind} {decl.name!r} ({decl.describe()}) is not a subclass of "
                              f"{base.__module__}.{base.__qualname__}", plugin=decl.dist, name=decl.name)


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


#: the compressors (group ``ragpress.compressors``)
compressors: Registry[Compressor] = Registry("compressor", COMPRESSORS_GROUP, lambda: Compressor,
                                             UnknownCompressorError)


def register(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator adding a compressor defined in code (a script, a test) under ``cls.name``;
    a package declares an entry point in the ``ragpress.compressors`` group instead."""
    return compressors.register(cls)


def available() -> list[str]:
    """Names of all compressors that load (each one's module is imported); see :func:`plugin_errors`."""
    return compressors.available()


def get_compressor_class(name: str) -> type[Compressor]:
    """The compressor class ``name`` (its module imported on first use): an
    :class:`~ragpress.core.errors.UnknownCompressorError` if nobody declares it, a
    :class:`~ragpress.core.errors.PluginError` if its plugin is broken."""
    return compressors.get(name)


def create_compressor(name: str, config: dict[str, Any] | None = None, **overrides: Any) -> Compressor:
    """A new compressor ``name`` with ``config``; models load lazily and are shared per process."""
    return get_compressor_class(name)(config, **overrides)


def plugin_errors() -> list[PluginError]:
    """Why compressor plugins seen so far cannot be used (after :func:`available`: all of them)."""
    return compressors.errors()


def refresh() -> None:
    """Read the installed compressor entry points again (a plugin installed while running)."""
    compressors.refresh()
