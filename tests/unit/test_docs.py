"""The docs say what the code does: the CLI reference is current and covers every option and
command, the exit-code table is the code's, and the README stays a front door."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from pipeline import exits, options

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_current_help():
    assert (DOCS / "cli-reference.md").read_text() == _generator().reference(), \
        "docs/cli-reference.md is stale: run `make cli-reference` (python docs/cli_reference.py)"


def test_every_option_is_documented():
    reference = (DOCS / "cli-reference.md").read_text()
    missing = [o.long for o in options.OPTIONS if not o.hidden and o.long not in reference]
    assert missing == []
    # ... and each option has help text of its own
    assert [o.name for o in options.OPTIONS if not o.help] == []


def test_every_command_is_in_the_guide():
    from pipeline.cli import cli

    pages = "".join(p.read_text() for p in DOCS.glob("*.md") if p.name != "cli-reference.md")
    assert [c for c in cli.commands if f"pipeline {c}" not in pages] == []


def test_exit_code_table_is_the_codes():
    page = (DOCS / "reliability.md").read_text()
    for code, meaning in exits.MEANING.items():
        assert f"| {code} | {meaning} |" in page
    assert all(str(code) in exits.HELP for code in exits.MEANING)


def test_every_error_class_knows_its_exit_code():
    from pipeline.engines.dispatcher import EngineStartError, TooManyRestarts
    from pipeline.output.folder import OutputConflict
    from pipeline.output.lease import LeaseLost, OutputBusy
    from pipeline.storage import StorageError

    expected = {OutputConflict: exits.ERROR, StorageError: exits.INCOMPLETE, OutputBusy: exits.INCOMPLETE,
                LeaseLost: exits.INCOMPLETE, TooManyRestarts: exits.INCOMPLETE,
                EngineStartError: exits.ENGINE_START, exits.UserError: exits.ERROR}
    assert {cls: exits.code_of(cls("x")) for cls in expected} == expected
    assert exits.code_of(exits.Interrupted()) == exits.code_of(KeyboardInterrupt()) == exits.INCOMPLETE
    assert not issubclass(exits.Interrupted, Exception)  # no `except Exception` can swallow it


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    # its two commands, and links that point at pages that exist
    assert "make demo" in readme and "make test" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / link).exists(), link


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_page_is_in_the_site_navigation(page):
    assert page in (REPO / "mkdocs.yml").read_text()
