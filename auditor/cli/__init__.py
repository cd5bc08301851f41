"""Typer command-line interface: thin over the library functions."""
