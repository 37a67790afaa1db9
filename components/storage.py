r"""Read dataset files from a local folder or an S3 bucket, through one small API.

A *root* is a local directory path or ``s3://bucket/prefix``. Adapters only
ever name files *relative* to their source root (``images/a.png``); the
functions here turn those into absolute URIs, refusing any that would leave
the root (``../../etc/passwd``, absolute paths, or, on local disk, a symlink
whose target lies outside the root): dataset metadata is untrusted input.

File names come from other systems: a local name that is not valid UTF-8 (the Latin-1
byte 0xE9 for "é", left by an archive made on Windows) is listed as Python gives it (the
byte as a lone surrogate, os.fsdecode); ``has_undecodable_bytes`` tells such a name and
``escaped_name`` gives its printable form, the text ``caf\xe9.png`` (a backslash, then
``xe9``), the one to show and store (UTF-8 writers refuse the surrogate).

Text files are read by their byte-order mark (UTF-8, UTF-16, UTF-32: what spreadsheet
exports write), else as UTF-8, else in the fallback encodings given; text that none of
them decodes (a binary file) is an error naming the file and the encodings tried. The
order is fixed rather than guessed: charset-normalizer, tried on a short cp1252 CSV,
answered cp1250.

Every error is a StorageError (components.errors) whose message names the URI and the problem.
"""

from __future__ import annotations

import codecs
import os
import posixpath
import re
from pathlib import Path

from components import s3
from components.errors import MissingFileError, OutsideRootError, StorageError
from components.s3 import is_s3_uri, parse_s3_uri

__all__ = [
    "MissingFileError",
    "OutsideRootError",
    "StorageError",
    "child_uri",
    "decode_text",
    "describe_content",
    "escaped_name",
    "has_undecodable_bytes",
    "is_s3_uri",
    "list_files",
    "parse_s3_uri",
    "read_bytes",
    "read_head",
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


def read_head(uri: str, size: int = 256) -> bytes:
    """The first bytes of a local file or S3 object (a ranged GET), to tell its format without reading it all.

    Args:
        uri: a local path or ``s3://bucket/key``.
        size: how many bytes at most (256 covers the signatures of describe_content, DICOM's at 128).

    Returns:
        Up to `size` bytes; fewer for a shorter file, b"" for an empty one.

    Raises:
        MissingFileError: the file does not exist (or is a folder).
        StorageError: permission denied, or any other S3 failure (named in the message).
    """
    if is_s3_uri(uri):
        return s3.read_object(uri, first_bytes=size)
    try:
        with open(uri, "rb") as file:
            return file.read(size)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError(f"{uri} does not exist or is not a file") from None
    except PermissionError as error:
        raise StorageError(f"{uri}: permission denied ({error})") from None


# Signatures (magic numbers) of the formats a data drop may hold, as published with each format.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (128, b"DICM", "a DICOM file"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"BM", "a BMP image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or a .xlsx/.docx)"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)
_WEBP = (b"RIFF", b"WEBP")


def describe_content(head: bytes) -> str:
    """What a file's first bytes say it is, in words for an exclusion detail.

    Args:
        head: the file's first bytes (read_head; 132 or more to recognise DICOM).

    Returns:
        E.g. "a PNG image", "a DICOM file", "a ZIP archive (or a .xlsx/.docx)", "an empty file",
        "text", or "bytes starting 00 01 02 03" when nothing is recognised.
    """
    if not head:
        return "an empty file"
    for offset, signature, name in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if head[:4] == _WEBP[0] and head[8:12] == _WEBP[1]:
        return "a WebP image"
    try:
        _decoded(head, "utf-8", partial=True)
        return "text"
    except (UnicodeDecodeError, ValueError):
        return "bytes starting " + head[:8].hex(" ")


# ---------------------------------------------------------------- names


def has_undecodable_bytes(name: str) -> bool:
    """Whether a file name holds bytes that are not valid UTF-8 (os.fsdecode's lone surrogates).

    Args:
        name: a name or path as os.listdir / os.walk give it.

    Returns:
        True when the name cannot be written as UTF-8 (the byte 0xE9 listed as the surrogate U+DCE9).
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escaped_name(name: str) -> str:
    r"""A file name with its undecodable bytes written as ``\xNN``: printable, storable as UTF-8.

    Args:
        name: a name or path as os.listdir / os.walk give it (undecodable bytes as lone surrogates).

    Returns:
        The name unchanged when it is valid UTF-8; else e.g. the text ``caf\xe9.png`` (a backslash,
        then ``xe9``) for a name whose bytes are ``caf``, 0xE9, ``.png``.
    """
    if not has_undecodable_bytes(name):
        return name
    raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------- text

# Byte-order marks, longest first (UTF-32 LE's starts with UTF-16 LE's).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# C0 control characters other than tab, line feed, vertical tab, form feed and carriage return:
# never in a text file, always in binary data (a NUL within the first bytes of a PNG, say).
_NOT_TEXT = re.compile(r"[\x00-\x08\x0e-\x1f]")


def _decoded(data: bytes, encoding: str, partial: bool = False) -> str:
    """`data` decoded strictly; ValueError when the result holds control characters (not text)."""
    if partial:  # a head cut anywhere: a multi-byte character may be cut at its end
        text = codecs.getincrementaldecoder(encoding)("strict").decode(data, final=False)
    else:
        text = data.decode(encoding)
    bad = _NOT_TEXT.search(text)
    if bad:
        raise ValueError(f"control character {bad.group()!r} at character {bad.start()}: binary data, not text")
    return text


def _utf16_without_bom(data: bytes) -> str | None:
    """utf-16-le / utf-16-be when NUL bytes fill every other position (ASCII text as UTF-16), else None."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    odd, even = sample[1::2].count(0), sample[0::2].count(0)
    half = len(sample) // 2
    if odd > 0.4 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.4 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


def decode_text(data: bytes, uri: str, fallback_encodings: tuple[str, ...] = ()) -> str:
    """Text of a file's bytes: by its byte-order mark, else UTF-8, else each fallback encoding in turn.

    A byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE) decides the encoding and is removed;
    without one, UTF-16 is recognised by its NUL bytes (ASCII text stored in two bytes per
    character). A decoding that yields control characters other than whitespace is refused:
    binary data decodes as Latin-1 but is not text.

    Args:
        data: the file's bytes.
        uri: the file, for the error message.
        fallback_encodings: encodings tried in order after UTF-8 (e.g. ``("cp1252", "latin-1")``
            for metadata exported on Windows).

    Returns:
        The decoded text, without the byte-order mark.

    Raises:
        StorageError: no encoding tried gives text; the message names the file, the encodings
            tried and why the last one failed.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            candidates = [encoding]
            data = data[len(bom) :]
            what = f"a {encoding.upper()} byte-order mark"
            break
    else:
        guessed = _utf16_without_bom(data)
        candidates = [guessed] if guessed else ["utf-8", *fallback_encodings]
        what = f"NUL bytes of {guessed.upper()} text" if guessed else "no byte-order mark"
    problem = ""
    for encoding in candidates:
        try:
            return _decoded(data, encoding)
        except (UnicodeDecodeError, ValueError) as error:
            problem = str(error)
    tried = [encoding.upper() for encoding in candidates]
    listed = tried[0] if len(tried) == 1 else f"{', '.join(tried[:-1])} or {tried[-1]}"
    raise StorageError(
        f"{uri} is not {listed} text ({what}; encodings tried: {', '.join(tried)}; {tried[-1]}: {problem}); "
        "save it as UTF-8 (or UTF-16 with a byte-order mark)"
    )


def read_text(uri: str, fallback_encodings: tuple[str, ...] = ()) -> str:
    """Read a text file: by its byte-order mark (spreadsheet exports add one), else UTF-8, else the fallbacks.

    Args:
        uri: a local path or ``s3://bucket/key``.
        fallback_encodings: encodings tried in order when the bytes are not UTF-8
            (e.g. ``("cp1252",)`` for metadata exported on Windows).

    Returns:
        The decoded text (see decode_text).

    Raises:
        MissingFileError: the file does not exist.
        StorageError: no encoding tried gives text (the message names the file and the encodings
            tried), or it cannot be read.
    """
    return decode_text(read_bytes(uri), uri, fallback_encodings)
