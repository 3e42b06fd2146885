"""Pieces every command-line entry point shares: error handling, logging, progress bars."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from tqdm import tqdm

from qualitynet.errors import QualityNetError

__all__ = ["cli_errors", "progress", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class _Terminated(Exception):
    """SIGTERM arrived: unwinds the stack like Ctrl-C, so every ``with``/``finally`` cleans up."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Terminated


def cli_errors(func: F) -> F:
    """Turn :class:`QualityNetError` into one clean line and exit 1; Ctrl-C into exit 130 and
    SIGTERM into exit 143, both after the same clean-up as a normal end.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            return func(*args, **kwargs)
        except QualityNetError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except _Terminated:
            click.echo("terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log to stderr: warnings only with ``quiet``, debug with ``verbose``, else info."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def progress(iterable: Iterable[T] | None = None, *, quiet: bool = False, **kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A tqdm bar on stderr, silent when ``quiet`` or when stderr is not a terminal."""
    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)
