"""The ``hematovision`` command: one click group; each area's commands live in their own module.

Heavy imports (TensorFlow, OpenSlide, Flask, Celery) happen inside the commands, so ``--help``
stays fast.
"""

from __future__ import annotations

import click

from hematovision import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hematovision")
def main() -> None:
    """HematoVision: digital morphology for peripheral blood smears."""


def _register() -> None:
    from hematovision.cli import (
        admin_commands,
        bench_command,
        client_commands,
        demo_command,
        detect_commands,
        jobs_commands,
        lis_commands,
        model_commands,
        process_command,
        rbc_commands,
        registry_commands,
        server_commands,
        slide_commands,
        users_commands,
    )

    for module in (
        demo_command,
        server_commands,
        admin_commands,
        users_commands,
        jobs_commands,
        lis_commands,
        client_commands,
        process_command,
        slide_commands,
        model_commands,
        rbc_commands,
        detect_commands,
        bench_command,
        registry_commands,
    ):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
