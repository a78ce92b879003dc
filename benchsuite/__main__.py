"""``benchsuite`` and ``python -m benchsuite``: the command line (:mod:`benchsuite.cli`), imported here
so that Ctrl-C at any moment, while torch loads or while the table prints, ends with one line."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from .cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:
        print("\nbenchsuite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `benchsuite report | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
