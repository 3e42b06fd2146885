"""Re-run the example commands of the docs and write their real output under them.

    bash scripts/demo.sh                                  # the model the examples use
    python -m qualitynet.docs_examples docs/*.md          # from the repository root

A block to regenerate is a ```` ```console ```` block right after a line ``<!-- example -->``.
Each ``$ `` line in it is run with bash from the current directory, and the lines after it, up
to the next ``$ `` line, are replaced by what it printed (stdout and stderr together, as a
terminal shows them). Other blocks are left as they are.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["MARKER", "regenerate", "run_shell"]

MARKER = "<!-- example -->"
_PROMPT = "$ "


def run_shell(command: str) -> str:
    """What ``command`` prints, stdout and stderr interleaved, without the last newline."""
    result = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            check=False)
    return result.stdout.rstrip("\n")


def regenerate(text: str, run: Callable[[str], str] = run_shell) -> str:
    """``text`` with the output of every command of every marked block replaced by what ``run`` gives.

    Args:
        text: a Markdown page.
        run: runs one command and returns its output.
    """
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        if lines[i].strip() == MARKER and i + 1 < len(lines) and lines[i + 1].startswith("```console"):
            out.append(lines[i + 1])
            i += 2
            while i < len(lines) and not lines[i].startswith("```"):
                if lines[i].startswith(_PROMPT):
                    out.append(lines[i])
                    output = run(lines[i][len(_PROMPT):])
                    out += output.split("\n") if output else []
                i += 1
            continue
        i += 1
    return "\n".join(out)


def main() -> None:
    """Regenerate the pages named on the command line, in place."""
    for name in sys.argv[1:]:
        page = Path(name)
        text = page.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"regenerated the examples of {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
