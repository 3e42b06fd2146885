"""The command-line reference (``docs/cli.md``), generated from every ``iqa-*`` command's ``--help``.

    python -m qualitynet.docs_cli > docs/cli.md

The commands are the ``iqa-*`` console scripts the installed ``qualitynet`` distribution
declares; help is rendered at a fixed width so that the page is the same on every machine.
``tests/test_docs.py`` regenerates it and fails when the committed page differs.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

__all__ = ["WIDTH", "command_help", "commands", "reference"]

WIDTH = 100

_HEADER = """\
# Command-line reference

Generated from each command's `--help` by `python -m qualitynet.docs_cli > docs/cli.md`; do not
edit by hand (`tests/test_docs.py` fails when this page and the commands disagree).
"""


def commands() -> dict[str, click.Command]:
    """Every ``iqa-*`` console script of the installed ``qualitynet`` distribution, by name."""
    found = {ep.name: ep for ep in entry_points(group="console_scripts")
             if ep.name.startswith("iqa-") and ep.dist is not None and ep.dist.name == "qualitynet"}
    return {name: found[name].load() for name in sorted(found)}


def command_help(name: str, command: click.Command, parent: click.Context | None = None) -> str:
    """``command``'s ``--help`` as ``name --help`` prints it, wrapped at :data:`WIDTH` columns."""
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return command.get_help(click.Context(command, info_name=name, parent=parent, **settings))


def _sections(name: str, command: click.Command, parent: click.Context | None = None) -> list[str]:
    """A section per command and, for a group, per subcommand."""
    sections = [f"## `{' '.join(_path(parent) + [name])}`\n\n```text\n{command_help(name, command, parent)}\n```\n"]
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
        for sub in command.list_commands(ctx):
            sections += _sections(sub, command.commands[sub], ctx)
    return sections


def _path(ctx: click.Context | None) -> list[str]:
    return [] if ctx is None else _path(ctx.parent) + [ctx.info_name or ""]


def reference() -> str:
    """The whole Markdown page: a header, a table of contents and each command's help."""
    found = commands()
    toc = "".join(f"- [`{name}`](#{name})\n" for name in found)
    body = "\n".join(section for name, command in found.items() for section in _sections(name, command))
    return f"{_HEADER}\n{toc}\n{body}"


def main() -> None:
    """Print the reference on stdout."""
    sys.stdout.write(reference())


if __name__ == "__main__":
    main()
