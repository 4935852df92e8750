"""Write docs/cli-reference.md from every command's --help (run by `make cli-reference`; a test checks
that the page is current)."""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).with_name("cli-reference.md")


def reference() -> str:
    """The page: the group's help, then each command's, as `pipeline [CMD] --help` prints them."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    def help_of(*args: str) -> str:
        return CliRunner().invoke(cli, [*args, "--help"], prog_name="pipeline", terminal_width=100,
                                  env={"COLUMNS": "100"}).output.rstrip()

    parts = ["# CLI reference\n", "Generated from each command's `--help` (`make cli-reference`); every option "
             "is also a job-file key and a `PIPELINE_<OPTION>` environment variable.\n",
             f"```text\n{help_of()}\n```\n"]
    parts += [f"## pipeline {name}\n\n```text\n{help_of(name)}\n```\n" for name in sorted(cli.commands)]
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(reference())
    print(f"wrote {PAGE}", file=sys.stderr)
