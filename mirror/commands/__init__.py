"""Subcommands of ``mirror``; importing this package registers them on ``mirror.cli.cli``."""

from mirror.commands import admin, mirroring, tools, watching

__all__ = ["admin", "mirroring", "tools", "watching"]
