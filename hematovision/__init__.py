"""HematoVision shared core: settings, results schema, slide I/O, flag rules, reports, CLI."""

__version__ = "0.1.0"
