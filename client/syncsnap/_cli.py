"""Shim: the console script's old entry point ``syncsnap._cli:main``; the command is ``syncsnap.cli:main``."""

from .cli import main as main
