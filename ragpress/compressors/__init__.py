"""The built-in compressors, one module per method. Each is declared in ragpress's
``pyproject.toml`` as an entry point of the ``ragpress.compressors`` group, exactly as a plugin
package declares its own, and imported only when its name is first used
(:mod:`ragpress.core.registry`); importing this package imports none of them."""
