"""Errors a user can fix: the CLI prints their message and exits 2; anything else is a bug and
shows its traceback.

Each subclasses the builtin that callers and tests already catch (ValueError, FileNotFoundError,
ImportError), so code that handles a bad input the old way still does.
"""

from __future__ import annotations


class UserError(Exception):
    """A config, an input file or a missing earlier stage; the message says which and the way
    out."""


class InputError(UserError, ValueError):
    """An input (corpus file, feature file, truth CSV, store) that cannot be used as it is."""


class MissingInput(UserError, FileNotFoundError):
    """An input that is not there; the message names the command that makes it."""


class MissingExtra(UserError, ImportError):
    """An optional dependency a configured component needs; the message names the extra."""


class UnknownName(UserError, KeyError):
    """A name (sample, feature, column) asked for that the input does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
