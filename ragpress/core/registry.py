"""Compressors by name: the CLI, the service and LangChain all look methods up here."""

from __future__ import annotations

from typing import Any

from ragpress.core.compressor import Compressor
from ragpress.core.errors import UnknownCompressorError

_REGISTRY: dict[str, type[Compressor]] = {}


def register(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator adding a compressor to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"compressor name {cls.name!r} is already registered by {_REGISTRY[cls.name]}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    import ragpress.compressors  # noqa: F401  (modules register themselves on import)


def available() -> list[str]:
    """Names of all registered compressors."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_compressor_class(name: str) -> type[Compressor]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownCompressorError(name, sorted(_REGISTRY)) from None


def create_compressor(name: str, config: dict[str, Any] | None = None, **overrides: Any) -> Compressor:
    """A new compressor ``name`` with ``config``; models load lazily and are shared per process."""
    return get_compressor_class(name)(config, **overrides)
