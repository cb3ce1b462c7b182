"""What every stage's command line shares: the error console, one-line failures, progress bars, the --json flag.

Progress bars and errors go to stderr, so `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (2: bad input, 1: a refused or failed step)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def progress(total: int, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields `advance(label, steps=1)`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=quiet, transient=False) as bar_display:
        bar = bar_display.add_task("starting", total=total)

        def advance(label: str, steps: int = 1) -> None:
            bar_display.update(bar, advance=steps, description=label[:60])

        yield advance
