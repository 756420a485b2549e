"""Errors raised for bad user input.

Every user-facing problem is an :class:`AniraError` whose message is one line
naming the problem; the CLI prints it without a traceback.
"""


class AniraError(ValueError):
    """A problem with what the user asked for (bad name, value, file, ...)."""


class PluginError(AniraError):
    """A plugin failed to load or to register (reported, never fatal for others)."""
