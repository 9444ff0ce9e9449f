"""Built-in compressors; importing this package registers them (no model loads at import)."""

from ragpress.compressors import baselines  # noqa: F401
from ragpress.compressors import longcodezip  # noqa: F401
