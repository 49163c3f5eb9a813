"""Errors and the command line: bad input as one line with exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import sys


class UserError(Exception):
    """Bad input from the user: reported as one line with exit code 2, never as a traceback."""


@contextlib.contextmanager
def exit_on_user_error():
    """A command's body: bad input (UserError) ends it with one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def without_option(argv: list[str], option: str) -> list[str]:
    """argv less every `option VALUE` and `option=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith(option + "="):
            skip = False
        elif arg == option:
            skip = True
        else:
            kept.append(arg)
    return kept


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) rather than the usage block."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)
