"""User-facing errors: the CLI prints their message on one line and exits with status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the offending value."""


class DataError(ValueError):
    """Unusable data: the message names the file, key or value."""
