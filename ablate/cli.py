"""The ``ablate`` command line: parses arguments and calls library functions, nothing more.

Every user-facing error is an :class:`ablate.errors.UserError` (or a
:class:`ablate.config.ConfigError`) and is printed as one red line with exit code 2,
never as a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from ablate.errors import UserError

app = typer.Typer(
    help="Ablation studies and hyperparameter searches of diffusion-based PET reconstruction.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Simulate, import and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper


# --- commands ------------------------------------------------------------------------------
# Each command is a thin wrapper: parse, call one library function, print.
