"""Every ``dynams`` command's ``--help`` ends with an example line naming that command."""

from __future__ import annotations

import argparse

import pytest

from dynams_service import cli


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL = [path for path, _ in commands(cli.build_parser())]


def test_the_walk_finds_every_command():
    assert {("dataset", "convert"), ("dataset", "info"), ("serve",), ("status",),
            ("job", "list"), ("job", "delete")} <= set(ALL)


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(("dynams", *p)))
def test_help_shows_an_example(path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*path, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    examples = [line for line in text.splitlines() if line.startswith("example")]
    assert examples, f"`dynams {' '.join(path)} --help` shows no example:\n{text}"
    assert " ".join(("dynams", *path)) in examples[0]
