"""What the commands share: loading the settings, setting up logs, talking to the API."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from hematovision.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from hematovision.cli.api_client import ApiClient

API_URL_ENV = "HEMATOVISION_API_URL"


def settings_or_exit(var_dir: str | None = None) -> Settings:
    """The installation's settings; invalid ``HEMATOVISION_*`` variables end the command with a message."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return load_settings(var_dir=var_dir)
    except (ValidationError, SettingsError) as e:  # HEMATOVISION_* variables that do not parse
        raise click.ClickException(f"invalid settings: {e}") from None


def setup_logging(settings: Settings, level: str = "INFO") -> None:
    """Entry points configure logging once, in the format the settings name."""
    from hematovision.core.logs import configure_logging

    configure_logging(level, settings.log_format)


def api_client(api: str, api_key: str | None) -> ApiClient:
    from hematovision.cli.api_client import ApiClient

    return ApiClient(api, api_key)


def api_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn API client errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        from hematovision.cli.api_client import ApiClientError

        try:
            return fn(*a, **kw)
        except ApiClientError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


_api_url = click.option(
    "--api",
    envvar=API_URL_ENV,
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the HematoVision API.",
)
_api_key = click.option(
    "--api-key",
    envvar="HEMATOVISION_API_KEY",
    default=None,
    help="API key (or HEMATOVISION_API_KEY); create one with `hematovision keys create`.",
)


def api_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _api_url(_api_key(fn))
