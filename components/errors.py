"""The base class of the errors a user acts on, and the storage errors every reader shares.

``cxr`` (cxr/cli.py) ends a command that raises a ``CxrError`` with one line,
``error: <message>``, and no traceback: exit status 2 for a ``ConfigError``,
1 for any other. Every other exception is a bug and keeps its traceback.

Each user-facing error class of ``components`` derives from ``CxrError`` and
keeps its builtin base (``ValueError``, ``RuntimeError``...), so callers that
catch the builtin type still catch it. The storage errors live here rather
than in components.storage because components.s3 raises them too.
"""

from __future__ import annotations

__all__ = ["CxrError", "MissingFileError", "OutsideRootError", "StorageError"]


class CxrError(Exception):
    """A problem with the user's input, config, data, weights or environment.

    Its message alone is enough to act on: it names the file, row, field, URI
    or setting at fault and says what is wrong (and, where it helps, what to
    do). Raise a subclass of it, never for a bug in this code.
    """


class StorageError(CxrError, RuntimeError):
    """A root or file could not be listed or read; the message names it and says why."""


class MissingFileError(StorageError):
    """The file does not exist (a manifest row names a file that is not there)."""


class OutsideRootError(StorageError):
    """A relative path from metadata resolves outside its source root."""
