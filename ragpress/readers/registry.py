"""Readers by name, from the ``ragpress.readers`` entry points (ragpress's own ``local`` and
``openai`` are declared in its ``pyproject.toml`` like a plugin's): the CLI, the service and the
evaluation harness look readers up here. See :mod:`ragpress.core.registry` for how a package adds
one and what a broken one does."""

from __future__ import annotations

from typing import Any

from ragpress.core.errors import UnknownReaderError
from ragpress.core.registry import READERS_GROUP, Registry


def _base() -> type:
    from ragpress.readers.base import Reader

    return Reader


#: the readers (group ``ragpress.readers``)
readers: Registry = Registry("reader", READERS_GROUP, _base, UnknownReaderError)


def register_reader(cls):
    """Class decorator adding a reader defined in code (a script, a test) under ``cls.name``; a
    package declares an entry point in the ``ragpress.readers`` group instead."""
    return readers.register(cls)


def available_readers() -> list[str]:
    """Names of all readers that load (each one's module is imported)."""
    return readers.available()


def get_reader_class(name: str) -> type:
    """The reader class ``name``: an :class:`~ragpress.core.errors.UnknownReaderError` if nobody
    declares it, a :class:`~ragpress.core.errors.PluginError` if its plugin is broken."""
    return readers.get(name)


def create_reader(name: str = "local", config: dict[str, Any] | None = None, **overrides: Any):
    """A new reader ``name`` with ``config``; models load lazily and are shared per process."""
    return get_reader_class(name)(config, **overrides)
