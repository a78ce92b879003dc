"""Every command's help, and every documented command line, against the real parser."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from benchsuite.cli import build_parser
from tests.conftest import bench

ROOT = Path(__file__).parent.parent
#: the docs' pages (the command-line reference is the parser's own help, checked below)
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]
#: methods the docs run that ship elsewhere: the example plugin's (examples/benchsuite-squared), and the naming
#: section's hypothetical third-party FLAP
EXAMPLE_METHODS = {"squared-weight", "benchsuite-flap:flap"}


def parsers(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    """(command path, parser) for the top level and every subcommand, at every depth."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


COMMANDS = list(parsers())


def test_every_command_has_a_subcommand_list_we_know():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "run", "report", "compare", "plugins", "models", "methods", "cache", "cache verify"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "benchsuite")
def test_help_works(path):
    result = bench(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: benchsuite")
    assert "%%" not in result.stdout and "%(" not in result.stdout  # argparse's escapes, printed verbatim


def _epilog_lines() -> list[tuple[str, str]]:
    out = []
    for path, parser in COMMANDS:
        for text in (parser.epilog or "", parser.description or ""):
            out += [(f"--help of benchsuite {' '.join(path)}".strip(), line) for line in text.splitlines()]
    return out


def _doc_lines() -> list[tuple[str, str]]:
    """Lines of fenced code blocks, and inline code spans, of the docs."""
    out = []
    for doc in DOCS:
        fenced = False
        for lineno, line in enumerate(doc.read_text().splitlines(), start=1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            where = f"{doc.relative_to(ROOT)}:{lineno}"
            if fenced:
                out.append((where, line))
            out += [(where, span) for span in re.findall(r"`(benchsuite [^`]+)`", line)]
    return out


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every ``benchsuite ...`` command line in README.md, docs/ and the help epilogs."""
    found = []
    for where, line in _epilog_lines() + _doc_lines():
        for part in re.split(r"&&|;", line):
            part = part.strip().removeprefix("$ ")
            if not part.startswith("benchsuite "):
                continue
            words = shlex.split(part, comments=True)
            words = words[:words.index(">")] if ">" in words else words  # `> table.md`
            found.append((where, words[1:]))
    return found


DOCUMENTED = documented_commands()


def test_the_docs_show_commands():
    where = {w.split(":")[0] for w, _ in DOCUMENTED}
    assert {"README.md", "docs/plugins.md"} <= where and any(w.startswith("--help") for w in where)
    assert len(DOCUMENTED) > 30


def _alternatives(argv: list[str]) -> list[list[str]]:
    """``--format png|svg`` as two command lines (the docs' way of showing a choice)."""
    for i, word in enumerate(argv):
        if "|" in word and i > 0 and argv[i - 1].startswith("--"):
            return [a for choice in word.split("|") for a in _alternatives([*argv[:i], choice, *argv[i + 1:]])]
    return [argv]


@pytest.mark.parametrize("where,argv", DOCUMENTED, ids=[f"{w} {' '.join(a)}" for w, a in DOCUMENTED])
def test_documented_command_parses(where, argv):
    parser = build_parser()
    for line in _alternatives(argv):
        try:
            args = parser.parse_args(line)
        except SystemExit:
            pytest.fail(f"{where}: `benchsuite {' '.join(line)}` is refused by the parser")
        if getattr(args, "command", None) == "run" and args.methods:
            from benchsuite.host import get_registry
            from benchsuite.running.plan import plan_methods
            from benchsuite.util.names import split_names

            names = [n for n in split_names(args.methods) if n.split("+")[0] not in EXAMPLE_METHODS]
            plan_methods(names, get_registry(), granularity=args.granularity)  # unknown names: a ConfigError


def _cheap(argv: list[str]) -> bool:
    """Commands that only read: the plugin listings, the cache's path, tables of the committed records."""
    if argv[:1] in (["plugins"], ["models"], ["methods"]) and "--update" not in argv or argv[:2] == ["cache", "path"]:
        return True
    reads_reference = argv[:1] in (["report"], ["compare"]) and "results/reference" in argv
    return reads_reference and not {"--update", "--against", "-o", "--output"} & set(argv) \
        and not any(w in ("html", "png", "svg") for w in argv)


CHEAP = [(w, a) for w, a in DOCUMENTED if _cheap(a)]


@pytest.mark.parametrize("where,argv", CHEAP, ids=[f"{w} {' '.join(a)}" for w, a in CHEAP])
def test_cheap_documented_commands_run(where, argv):
    result = bench(*argv, cwd=ROOT)
    assert result.returncode == 0, f"{where}: `benchsuite {' '.join(argv)}` failed: {result.stderr}"
    assert result.stdout.strip()
