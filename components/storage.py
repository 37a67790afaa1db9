"""Read dataset files from a local folder or an S3 bucket, through one small API.

A *root* is a local directory path or ``s3://bucket/prefix``. Adapters only
ever name files *relative* to their source root (``images/a.png``); the
functions here turn those into absolute URIs, refusing any that would leave
the root (``../../etc/passwd``, absolute paths, or, on local disk, a symlink
whose target lies outside the root): dataset metadata is untrusted input.

Every error is a StorageError (components.errors) whose message names the URI and the problem.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from components import s3
from components.errors import MissingFileError, OutsideRootError, StorageError
from components.s3 import is_s3_uri, parse_s3_uri

__all__ = [
    "MissingFileError",
    "OutsideRootError",
    "StorageError",
    "child_uri",
    "is_s3_uri",
    "list_files",
    "parse_s3_uri",
    "read_bytes",
    "read_text",
    "root_is_dir",
]


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


# ---------------------------------------------------------------- paths


def child_uri(root: str, relative: str) -> str:
    """The absolute URI of a file named relative to a source root, refusing any that leaves the root.

    Args:
        root: a local directory or ``s3://bucket/prefix``.
        relative: a path from dataset metadata, relative to `root` (``images/a.png``;
            backslashes are read as ``/``).

    Returns:
        ``<root>/<relative>`` normalised: an absolute local path, or an ``s3://`` URI.

    Raises:
        OutsideRootError: `relative` is absolute (``/x``, ``C:x``), empty, or leads outside
            the root (``../x``; on local disk also a symlink whose target lies outside).
    """
    relative = str(relative).replace("\\", "/")
    if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise OutsideRootError(f"{relative!r} is an absolute path; only paths inside {root} are allowed")
    normalised = posixpath.normpath(relative)
    if normalised == ".." or normalised.startswith("../") or normalised in ("", "."):
        raise OutsideRootError(f"{relative!r} points outside the source root {root}")
    if is_s3_uri(root):
        return root.rstrip("/") + "/" + normalised
    root_path = os.path.abspath(root)
    path = os.path.join(root_path, *normalised.split("/"))
    # A symlink inside the root may point anywhere: compare real locations.
    real_root, real_path = os.path.realpath(root_path), os.path.realpath(path)
    if os.path.commonpath([real_root, real_path]) != real_root:
        raise OutsideRootError(f"{path} resolves to {real_path}, outside the source root {root_path}")
    return path


# ---------------------------------------------------------------- local


def root_is_dir(root: str) -> bool:
    """Whether a source root exists: a local directory, or an S3 prefix holding at least one object.

    Args:
        root: a local directory or ``s3://bucket/prefix``.

    Returns:
        True for an existing local directory or a non-empty S3 prefix (directory markers do not count).

    Raises:
        StorageError: (S3 only) the bucket is missing, access is denied or the endpoint unreachable.
    """
    if is_s3_uri(root):
        return s3.prefix_has_objects(root)
    return Path(root).is_dir()


def list_files(root: str) -> list[str]:
    """Every visible file below a source root, as sorted relative POSIX paths.

    Hidden files and folders (any path part starting with ".") are skipped:
    .DS_Store, AppleDouble ``._x.png``, .git.

    Args:
        root: a local directory or ``s3://bucket/prefix``.

    Returns:
        Paths relative to `root` (``images/a.png``), sorted.

    Raises:
        StorageError: `root` is not a local directory, or (S3) the bucket is missing,
            access is denied or the endpoint unreachable.
    """
    if is_s3_uri(root):
        return sorted(key for key in s3.list_keys(root) if not _is_hidden(key))
    root_path = Path(root)
    if not root_path.is_dir():
        raise StorageError(f"{os.path.abspath(root)} is not a directory")
    found = []
    for current, dirs, files in os.walk(root_path):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        base = Path(current).relative_to(root_path).as_posix()
        for name in files:
            if not name.startswith("."):
                found.append(name if base == "." else f"{base}/{name}")
    return sorted(found)


def read_bytes(uri: str) -> bytes:
    """Read a whole local file or S3 object.

    Args:
        uri: a local path or ``s3://bucket/key``.

    Returns:
        The file's bytes.

    Raises:
        MissingFileError: the file does not exist (or is a folder).
        StorageError: permission denied, or any other S3 failure (named in the message).
    """
    if is_s3_uri(uri):
        return s3.read_object(uri)
    try:
        return Path(uri).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError(f"{uri} does not exist or is not a file") from None
    except PermissionError as error:
        raise StorageError(f"{uri}: permission denied ({error})") from None


def read_text(uri: str, fallback_encodings: tuple[str, ...] = ()) -> str:
    """Read a text file as UTF-8, with any byte-order mark removed (spreadsheet exports add one).

    Args:
        uri: a local path or ``s3://bucket/key``.
        fallback_encodings: encodings tried in order when the bytes are not UTF-8
            (e.g. ``("cp1252",)`` for metadata exported on Windows).

    Returns:
        The decoded text.

    Raises:
        MissingFileError: the file does not exist.
        StorageError: the text is neither UTF-8 nor in any of `fallback_encodings`, or it cannot be read.
    """
    data = read_bytes(uri)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        for encoding in fallback_encodings:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                continue
        raise StorageError(f"{uri} is not UTF-8 text ({error})") from None
