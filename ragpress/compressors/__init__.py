"""Built-in compressors; importing this package registers them (no model loads at import)."""

from ragpress.compressors import (
    arc,  # noqa: F401
    baselines,  # noqa: F401
    cprs,  # noqa: F401
    exit,  # noqa: F401
    longcodezip,  # noqa: F401
    tcra,  # noqa: F401
)
