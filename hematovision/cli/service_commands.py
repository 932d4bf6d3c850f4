"""Placeholder: commands of this area are added here."""

import click

COMMANDS: list[click.Command] = []
