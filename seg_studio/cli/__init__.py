"""Command line: ``seg-studio <command> ...``; one module per command group, ``main`` ties them."""

from .main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
