"""Subcommands of ``llmeff``."""
