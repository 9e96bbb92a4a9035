"""Errors of the hand-held side that end a command with one line, not a traceback.

They live apart from the commands so that every CLI module can raise them
without importing the argument parser (and the parser imports them all).
"""

from __future__ import annotations


class UsageError(ValueError):
    """A request the user can fix; printed as one line."""


class SendBroken(RuntimeError):
    """Sending a file's chunks broke after some were sent: its batch is recorded failed, and the message
    says how much went and what to do. Exit 1, one line: a service failed, not the input."""


class PortTaken(RuntimeError):
    """A port `make run` needs is in use; the message names the setting that moves it."""
