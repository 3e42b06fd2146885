"""The documentation cannot drift: the CLI reference is regenerated and compared, every option of every
command is in it, every command's help has an example, and every relative link resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import tomllib
from click.testing import CliRunner

from qualitynet.docs_cli import commands
from qualitynet.docs_examples import MARKER, regenerate

REPO = Path(__file__).resolve().parents[1]
CLI_MD = REPO / "docs" / "cli.md"
PAGES = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _all_commands() -> list[tuple[str, click.Command]]:
    """(full name, command) of every iqa-* command and subcommand."""
    found = []

    def walk(name: str, command: click.Command) -> None:
        found.append((name, command))
        if isinstance(command, click.Group):
            for sub, child in command.commands.items():
                walk(f"{name} {sub}", child)

    for name, command in commands().items():
        walk(name, command)
    return found


def test_the_installed_commands_are_the_ones_pyproject_declares() -> None:
    """Else the reference would be generated from a stale install (reinstall: pip install -e .)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert sorted(commands()) == sorted(name for name in scripts if name.startswith("iqa-"))


def test_cli_reference_matches_the_commands() -> None:
    """Generated in a fresh interpreter: this process has test models registered, which --config would list."""
    fresh = subprocess.run([sys.executable, "-m", "qualitynet.docs_cli"], capture_output=True, text=True, check=True,
                           cwd=REPO).stdout
    assert CLI_MD.read_text(encoding="utf-8") == fresh, \
        "docs/cli.md is out of date: python -m qualitynet.docs_cli > docs/cli.md"


def test_every_option_of_every_command_is_in_the_reference() -> None:
    text = CLI_MD.read_text(encoding="utf-8")
    for name, command in _all_commands():
        section = text.split(f"## `{name}`\n", 1)[1].split("\n## `", 1)[0]
        for param in command.params:
            is_option = isinstance(param, click.Option)
            flags = param.opts + param.secondary_opts if is_option else [param.human_readable_name]
            missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", section)]
            assert not missing, f"{name}: {missing} not in docs/cli.md"


@pytest.mark.parametrize(("name", "command"), _all_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    result = CliRunner().invoke(command, ["--help"], prog_name=name)
    assert result.exit_code == 0, result.output
    example = result.output.split("Example:", 1)
    assert len(example) == 2, f"{name} --help has no Example block"
    assert name.split()[0] in example[1].split("Options:", 1)[0]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (code blocks excluded)."""
    anchors, seen, in_code = set(), dict[str, int](), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def test_example_outputs_are_regenerated_from_the_commands_they_show() -> None:
    page = ("intro\n<!-- example -->\n```console\n$ echo one; echo two >&2\nstale\n$ printf ''\nold\n```\n\n"
            "```console\n$ echo untouched\nkept\n```\n")
    assert regenerate(page) == ("intro\n<!-- example -->\n```console\n$ echo one; echo two >&2\none\ntwo\n"
                                "$ printf ''\n```\n\n```console\n$ echo untouched\nkept\n```\n")


def test_every_marked_example_shows_a_command() -> None:
    for page in PAGES:
        blocks = page.read_text(encoding="utf-8").split(MARKER + "\n")[1:]
        assert all(block.startswith("```console\n$ ") for block in blocks), page
