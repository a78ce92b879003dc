"""``benchsuite`` and ``python -m benchsuite``: the command line (:mod:`benchsuite.cli`), imported here
so that Ctrl-C at any moment, while torch loads or while the table prints, ends with one line.

An interrupted run ends the way shells expect of a program stopped by Ctrl-C: killed by SIGINT (the
shell reports status 130 and stops a ``for`` loop around us). Python does the same when Ctrl-C lands
after the command has finished, so every moment of an interruption ends alike.
"""

from __future__ import annotations

import os
import signal
import sys


def _die_by_sigint() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(130)  # not reached where SIGINT exists


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C while torch, numpy & co. load is held until the imports are done: an import interrupted
    # half-way leaves a C extension that can't load again ("cannot load module more than once").
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        from .cli import main as cli_main
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        print("\nbenchsuite: interrupted", file=sys.stderr)
        _die_by_sigint()
    try:
        code = cli_main(argv)
    except KeyboardInterrupt:
        print("\nbenchsuite: interrupted", file=sys.stderr)
        _die_by_sigint()
        return 130
    except BrokenPipeError:  # e.g. `benchsuite report | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if code == 130:  # `run` caught Ctrl-C itself, to say that finished runs are saved
        _die_by_sigint()
    return code


if __name__ == "__main__":
    sys.exit(main())
