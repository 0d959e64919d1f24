"""Subcommands of ``mirror``, one module per family; ``mirror.cli`` adds them to its group.
What they share is ``mirror.commands.options``."""
