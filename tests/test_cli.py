"""The command table of `rsdistill`: each module defines exactly its commands, and only the one run is imported."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from rsdistill.cli.common import COMMANDS
from rsdistill.cli.main import build_parser, main, requested_command

HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "faiss", "open_clip")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("module", sorted({spec.module for spec in COMMANDS.values()}))
def test_each_module_defines_the_commands_the_table_gives_it(module: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(module).register(parser.add_subparsers())
    expected = {name for name, spec in COMMANDS.items() if spec.module == module}
    assert set(subcommands(parser)) == expected


def test_full_parser_defines_every_command_with_the_tables_help() -> None:
    parser = build_parser()
    assert set(subcommands(parser)) == {"data", "config", *COMMANDS}
    listing = parser.format_help()
    for spec in COMMANDS.values():
        assert " ".join(spec.help.split()) in " ".join(listing.split())


def test_requested_command_is_the_first_word_naming_one() -> None:
    assert requested_command(["refine", "set", "--dataset", "eurosat"]) == "refine"
    assert requested_command(["--help"]) is None
    assert requested_command(["data", "info", "eurosat"]) is None


def test_listing_and_light_commands_import_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from rsdistill.cli.main import build_parser, main\n"
        "build_parser([]).format_help()\n"
        "main(['config', 'show', 'data.dataset=ucmerced'])\n"
        f"print('imported:', *(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "dataset: ucmerced" in result.stdout
    assert result.stdout.splitlines()[-1] == "imported:"


def test_a_command_run_by_main_gets_its_full_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "--help"])
    assert exit_info.value.code == 0
    assert "--teacher_steps" in capsys.readouterr().out
