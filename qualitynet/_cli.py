"""Pieces every command-line entry point shares: error handling, logging, progress bars."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from tqdm import tqdm

from qualitynet.errors import QualityNetError

__all__ = ["cli_errors", "progress", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def cli_errors(func: F) -> F:
    """Turn :class:`QualityNetError` into one clean line and exit 1; Ctrl-C into exit 130.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QualityNetError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log to stderr: warnings only with ``quiet``, debug with ``verbose``, else info."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def progress(iterable: Iterable[T] | None = None, *, quiet: bool = False, **kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A tqdm bar on stderr, silent when ``quiet`` or when stderr is not a terminal."""
    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)
