"""The Typer application, its console, the error handling every command shares, and the
options several commands take (one definition each)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ablate.errors import UserError
from ablate.launch.interrupts import Interrupted

app = typer.Typer(
    help="Ablation studies and hyperparameter searches of diffusion-based PET reconstruction.",
    no_args_is_help=True,
    add_completion=False,
)

data_app = typer.Typer(help="Simulate, import and inspect datasets.", no_args_is_help=True)

app.add_typer(data_app, name="data")

console = Console()


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` into one line on stderr and exit code 2, a launch stopped
    by SIGINT/SIGTERM into a line naming ``ablate resume`` and exit code 130/143; shut down
    the embedded Ray a command started, however it ends."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            Console(stderr=True, soft_wrap=True).print(
                f"[bold red]error:[/] {err}", highlight=False
            )
            raise typer.Exit(code=2) from None
        except Interrupted as stop:
            then = f": continue with: {stop.hint}" if stop.hint else ""
            Console(stderr=True, soft_wrap=True).print(
                f"[bold yellow]interrupted[/] by {stop.signal_name}{then}", highlight=False
            )
            raise typer.Exit(code=stop.exit_code) from None
        finally:
            if "ablate.launch.driver" in sys.modules:
                sys.modules["ablate.launch.driver"].stop_ray()

    return wrapper


WORKDIR_OPT = typer.Option(Path("runs"), "--workdir", help="Work directory (MLflow, Ray, data).")

TRACKING_OPT = typer.Option(None, "--tracking-uri", help="MLflow URI (default: sqlite in workdir).")

RESOURCES_OPT = typer.Option(None, "--resources", help="Per trial: cpu=1,gpu=0.25")

STORAGE_HELP = (
    "Where launches keep records and checkpoints: a local/shared path or an object store "
    "URI (s3://bucket/prefix; endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY). Default: WORKDIR/ray_results."
)

STORAGE_OPT = typer.Option(None, "--storage", help=STORAGE_HELP)

NAME_OPT = typer.Option(None, "--name", help="Launch name (default: config name).")

OVERRIDES_ARG = typer.Argument(
    None, help="Settings as dotted key=value, e.g. train.steps=50 loss.k=1e-4.", show_default=False
)

ROWS_OPT = typer.Option(None, "--rows", help="Only these rows, e.g. --rows cpm,full.")

FOLDS_OPT = typer.Option(
    None, "--folds", help="With data.folds: only these folds (0-based), e.g. --folds 1,3."
)

ADDRESS_OPT = typer.Option(
    None, "--address", help="Ray cluster: auto, HOST:PORT or ray://... (default: embedded)."
)

DRY_RUN_OPT = typer.Option(
    False, "--dry-run", help="Print the plan, resources and MLflow target; start nothing."
)

STRICT_OPT = typer.Option(
    False,
    "--strict",
    help="Refuse (exit 2) when a contrast's rows differ in a setting beyond their switches.",
)

GPU_OPT = typer.Option(
    None, "--gpu", help="Plan for this device: H100, H200, A100 or cpu (default: by resources)."
)


def quiet_mlflow() -> None:
    """No download bars or MLflow notices between our lines (the CLI owns the process)."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def exit_for(result: Any) -> None:
    """Exit 1 when some trials failed, 130/143 when a signal stopped the launch."""
    if result.exit_code:
        raise typer.Exit(code=result.exit_code)
