"""Subcommands of ``mirror``; importing this package registers them on ``mirror.cli.cli``."""

from mirror.commands import mirroring, tools

__all__ = ["mirroring", "tools"]
