"""Readers by name: the CLI, the service and the evaluation harness look readers up here."""

from __future__ import annotations

from typing import Any

from ragpress.core.errors import UnknownReaderError

_READERS: dict[str, type] = {}


def register_reader(cls):
    """Class decorator adding a reader to the registry under ``cls.name``."""
    if cls.name in _READERS and _READERS[cls.name] is not cls:
        raise ValueError(f"reader name {cls.name!r} is already registered by {_READERS[cls.name]}")
    _READERS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    import ragpress.readers.local  # noqa: F401  (modules register themselves on import)
    import ragpress.readers.openai_compat  # noqa: F401


def available_readers() -> list[str]:
    _load_builtin()
    return sorted(_READERS)


def create_reader(name: str = "local", config: dict[str, Any] | None = None, **overrides: Any):
    """A new reader ``name`` with ``config``; models load lazily and are shared per process."""
    _load_builtin()
    try:
        cls = _READERS[name]
    except KeyError:
        raise UnknownReaderError(name, sorted(_READERS)) from None
    return cls(config, **overrides)
