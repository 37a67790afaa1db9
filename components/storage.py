"""Read dataset files from a local folder or an S3 bucket, through one small API.

A *root* is a local directory path or ``s3://bucket/prefix``. Adapters only
ever name files *relative* to their source root (``images/a.png``); the
functions here turn those into absolute URIs, refusing any that would leave
the root (``../../etc/passwd``, absolute paths, or, on local disk, a symlink
whose target lies outside the root): dataset metadata is untrusted input.

Every error is a StorageError whose message names the URI and the problem.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

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


class StorageError(RuntimeError):
    """A root or file could not be listed or read; the message names it and says why."""


class MissingFileError(StorageError):
    """The file does not exist (a manifest row names a file that is not there)."""


class OutsideRootError(StorageError):
    """A relative path from metadata resolves outside its source root."""


def is_s3_uri(uri: str) -> bool:
    return str(uri).startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; the key may be "" (the whole bucket).

    StorageError for anything else, e.g. ``s3://`` or ``s3:///key`` (no bucket).
    """
    uri = str(uri)
    if not is_s3_uri(uri):
        raise StorageError(f"{uri!r} is not an S3 URI; expected s3://bucket/prefix")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or any(character.isspace() for character in bucket):
        raise StorageError(f"malformed S3 URI {uri!r}: it names no valid bucket; expected s3://bucket/prefix")
    return bucket, key


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


# ---------------------------------------------------------------- paths


def child_uri(root: str, relative: str) -> str:
    """Absolute URI of `relative` under `root`; OutsideRootError if it escapes the root."""
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
    """True for an existing local directory or an S3 prefix holding at least one object."""
    if is_s3_uri(root):
        from components import s3

        return s3.prefix_has_objects(root)
    return Path(root).is_dir()


def list_files(root: str) -> list[str]:
    """Relative POSIX paths of every visible file below `root`, sorted.

    Hidden files and folders (any path part starting with ".") are skipped:
    .DS_Store, AppleDouble ``._x.png``, .git.
    """
    if is_s3_uri(root):
        from components import s3

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
    """The file's bytes; MissingFileError when it does not exist."""
    if is_s3_uri(uri):
        from components import s3

        return s3.read_object(uri)
    try:
        return Path(uri).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError(f"{uri} does not exist or is not a file") from None
    except PermissionError as error:
        raise StorageError(f"{uri}: permission denied ({error})") from None


def read_text(uri: str, fallback_encodings: tuple[str, ...] = ()) -> str:
    """UTF-8 text with any byte-order mark removed (spreadsheet exports add one).

    Text that is not UTF-8 is decoded with the first of `fallback_encodings`
    that accepts it; when none does, StorageError.
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
