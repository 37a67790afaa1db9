"""A work folder that was moved or copied: rewrite the absolute paths its stores recorded.

MLflow's SQLite store records absolute artifact locations (experiments, runs,
logged models, model versions), ZenML's SQLite store records absolute artifact,
visualization and log URIs, and ZenML's global config file records the absolute
URL of its SQLite store. A work folder therefore remembers where it was
created; `<workdir>/.location` (a `WorkdirLocation`) records that place, and a
folder found elsewhere is rewritten to point at its own files: every text value
that starts with the old folder's path, as a plain path, a ``file://`` URI, a
``sqlite:///`` URL or a JSON string, gets the new path instead. A copy is
rewritten the same way (each copy then points at its own files).

Stdlib ``sqlite3`` and ``yaml`` only: no ZenML or MLflow import (they must not
have opened the stores yet). ZenML's stack component configurations are stored
as encoded blobs; cxr.stack updates those through ZenML's client.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from components.errors import CxrError

__all__ = [
    "MARKER_NAME",
    "PathForm",
    "Relocation",
    "WorkdirError",
    "WorkdirLocation",
    "path_forms",
    "read_location",
    "relocate",
    "rewrite_sqlite_prefix",
    "rewrite_yaml_prefix",
    "sqlite_rows",
    "workdir_from_recorded",
    "write_location",
]

MARKER_NAME = ".location"
SQLITE_TIMEOUT_S = 30.0  # another process writing the store (a run in progress) holds its lock


class WorkdirError(CxrError, RuntimeError):
    """The work folder's location record or its stores cannot be read or rewritten; the message names the file."""


class WorkdirLocation(BaseModel):
    """The content of `<workdir>/.location`: where the folder was when it was last opened."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # absolute, resolved

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not Path(path).is_absolute():
            raise ValueError(f"path must be absolute, got {path!r}")
        return path


class PathForm(BaseModel):
    """One way a path is written in a stored value: the old and new prefixes, and what may follow them.

    A value is rewritten when it equals `old` or continues after it with one of `boundaries`
    (so `/a/work` never matches `/a/work2/...`).
    """

    model_config = ConfigDict(frozen=True)

    old: str
    new: str
    boundaries: tuple[str, ...] = ("/",)


class Relocation(BaseModel):
    """What opening a moved (or copied) work folder rewrote.

    `rewritten` counts the values per place: ``"<file relative to the work folder>: <table>.<column>"``
    for SQLite stores, ``"<file>"`` for YAML files; places without a match are left out.
    """

    old: str
    new: str
    rewritten: dict[str, int]

    @property
    def total(self) -> int:
        """The number of values rewritten, all places together."""
        return sum(self.rewritten.values())

    def summary(self) -> str:
        """One line for the log: the move and the count of rewritten values per place."""
        places = ", ".join(f"{place} {count}" for place, count in self.rewritten.items()) or "nothing recorded there"
        return f"work folder moved from {self.old} to {self.new}: rewrote {self.total} recorded paths ({places})"


def path_forms(old: Path, new: Path) -> list[PathForm]:
    """The forms in which the stores write a path below `old`, each with its replacement below `new`.

    Plain path, ``file://`` URI (percent-encoded as `Path.as_uri` writes it, and raw), ``sqlite:///``
    URL (a SQLite file below the folder), and each of them as a JSON string (ZenML's run metadata:
    ``"sqlite:////old/mlflow/mlflow.db"``).

    Args:
        old: The folder's previous absolute path.
        new: Its absolute path now.

    Returns:
        The forms, without duplicates, longest old prefix first.

    Raises:
        ValueError: `old` or `new` is not absolute (`Path.as_uri`).
    """
    plain = [
        (str(old), str(new)),
        (old.as_uri(), new.as_uri()),
        (f"file://{old}", f"file://{new}"),
        (f"sqlite:///{old}", f"sqlite:///{new}"),
    ]
    forms = [PathForm(old=before, new=after) for before, after in plain]
    forms += [
        PathForm(old=json.dumps(before)[:-1], new=json.dumps(after)[:-1], boundaries=("/", '"'))
        for before, after in plain
    ]
    unique = {form.old: form for form in forms}
    return sorted(unique.values(), key=lambda form: len(form.old), reverse=True)


def _rewritten(value: str, forms: Sequence[PathForm]) -> str:
    for form in forms:
        if value == form.old or (value.startswith(form.old) and value[len(form.old)] in form.boundaries):
            return form.new + value[len(form.old) :]
    return value


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_update(table: str, column: str, forms: Sequence[PathForm]) -> tuple[str, list[object]]:
    """One UPDATE that rewrites the matching text values of a column (every form in one pass)."""
    col = _quoted(column)
    conditions, cases, condition_params, case_params = [], [], [], []
    for form in forms:
        size = len(form.old)
        marks = ", ".join("?" for _ in form.boundaries)
        condition = f"(substr({col}, 1, ?) = ? AND (length({col}) = ? OR substr({col}, ?, 1) IN ({marks})))"
        params = [size, form.old, size, size + 1, *form.boundaries]
        conditions.append(condition)
        condition_params.extend(params)
        cases.append(f"WHEN {condition} THEN ? || substr({col}, ?)")
        case_params.extend([*params, form.new, size + 1])
    sql = (
        f"UPDATE {_quoted(table)} SET {col} = CASE {' '.join(cases)} ELSE {col} END "
        f"WHERE typeof({col}) = 'text' AND ({' OR '.join(conditions)})"
    )
    return sql, [*case_params, *condition_params]


def _rewrite_encoded(value: bytes, forms: Sequence[PathForm]) -> bytes | None:
    """A base64-encoded JSON blob with its paths rewritten; None when it is not one or names none.

    ZenML stores its stack component configurations and its services' config and status so.
    """
    try:
        document = json.loads(base64.b64decode(value, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(document, (dict, list)):
        return None
    rewritten, count = _rewrite_tree(document, forms)
    return base64.b64encode(json.dumps(rewritten).encode("utf-8")) if count else None


def _rewrite_blobs(connection: sqlite3.Connection, table: str, column: str, forms: Sequence[PathForm]) -> int:
    """Rewrite the base64-encoded JSON blobs of a column row by row; tables without rowid are skipped."""
    try:
        rows = connection.execute(
            f"SELECT rowid, {_quoted(column)} FROM {_quoted(table)} WHERE typeof({_quoted(column)}) = 'blob'"
        ).fetchall()
    except sqlite3.OperationalError:  # a WITHOUT ROWID table
        return 0
    changed = 0
    for rowid, value in rows:
        rewritten = _rewrite_encoded(value, forms)
        if rewritten is not None:
            connection.execute(f"UPDATE {_quoted(table)} SET {_quoted(column)} = ? WHERE rowid = ?", (rewritten, rowid))
            changed += 1
    return changed


def _connect(database: Path) -> sqlite3.Connection:
    """Open an existing SQLite file for writing (never create one); autocommit off via explicit BEGIN."""
    return sqlite3.connect(
        f"file:{quote(str(database))}?mode=rw", uri=True, isolation_level=None, timeout=SQLITE_TIMEOUT_S
    )


def rewrite_sqlite_prefix(database: Path, old: Path, new: Path) -> dict[str, int]:
    """Rewrite every text value below `old` (in any of `path_forms`) to `new`, in one transaction.

    Every column of every table is searched: which ones hold locations differs between
    MLflow and ZenML versions (e.g. MLflow 3's ``logged_models.artifact_location``).
    Text values are rewritten in SQL; blobs that hold base64-encoded JSON (ZenML's stack
    component configurations, its services' config and status) are decoded, rewritten and
    encoded again; other blobs are left alone.

    Args:
        database: An existing SQLite file (it is not created when missing).
        old: The work folder's previous absolute path.
        new: Its absolute path now.

    Returns:
        ``{"<table>.<column>": number of values rewritten}`` for the columns with a match.

    Raises:
        WorkdirError: The file cannot be opened for writing, is not a SQLite database, is locked
            longer than 30 s, or a rewritten value breaks a constraint; nothing was changed then.
    """
    forms = path_forms(old, new)
    counts: dict[str, int] = {}
    try:
        connection = _connect(database)
    except sqlite3.Error as error:
        raise WorkdirError(f"{database}: cannot open the database to rewrite its paths ({error})") from None
    try:
        connection.execute("BEGIN IMMEDIATE")
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        ]
        for table in tables:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({_quoted(table)})").fetchall()]
            for column in columns:
                sql, params = _column_update(table, column, forms)
                changed = connection.execute(sql, params).rowcount + _rewrite_blobs(connection, table, column, forms)
                if changed > 0:
                    counts[f"{table}.{column}"] = changed
        connection.execute("COMMIT")
    except sqlite3.Error as error:
        if connection.in_transaction:
            connection.rollback()
        raise WorkdirError(f"{database}: cannot rewrite the paths it records ({error}); nothing was changed") from None
    finally:
        connection.close()
    return counts


def _rewrite_tree(node: object, forms: Sequence[PathForm]) -> tuple[object, int]:
    if isinstance(node, str):
        value = _rewritten(node, forms)
        return value, int(value != node)
    if isinstance(node, dict):
        items = [(key, *_rewrite_tree(value, forms)) for key, value in node.items()]
        return {key: value for key, value, _ in items}, sum(count for _, _, count in items)
    if isinstance(node, list):
        items = [_rewrite_tree(value, forms) for value in node]
        return [value for value, _ in items], sum(count for _, count in items)
    return node, 0


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def rewrite_yaml_prefix(file: Path, old: Path, new: Path) -> int:
    """Rewrite the string values below `old` (any of `path_forms`) in a YAML mapping file.

    The file is written again (atomically) only when a value changed.

    Args:
        file: An existing YAML file (ZenML's ``config.yaml``: ``store.url``, ``store.database``...).
        old: The work folder's previous absolute path.
        new: Its absolute path now.

    Returns:
        The number of values rewritten.

    Raises:
        WorkdirError: The file cannot be read, parsed or written.
    """
    try:
        document = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise WorkdirError(f"{file}: cannot read it to rewrite its paths ({error})") from None
    rewritten, count = _rewrite_tree(document, path_forms(old, new))
    if count:
        try:
            _write_atomically(file, yaml.safe_dump(rewritten, sort_keys=False))
        except OSError as error:
            raise WorkdirError(f"{file}: cannot write the rewritten paths ({error.strerror or error})") from None
    return count


def read_location(workdir: Path) -> Path | None:
    """Where the work folder was last opened, from its `.location` file; None when it has none.

    Args:
        workdir: The work folder (absolute, resolved).

    Returns:
        The recorded absolute path, or None when the file does not exist.

    Raises:
        WorkdirError: The file exists but cannot be read or is not a `WorkdirLocation` (JSON).
    """
    marker = workdir / MARKER_NAME
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{marker}: cannot read the work folder's location record ({error})") from None
    try:
        location = WorkdirLocation.model_validate_json(text)
    except ValidationError as error:
        raise WorkdirError(
            f"{marker}: not a location record ({error.errors()[0]['msg']}); delete it if the folder was not moved"
        ) from None
    return Path(location.path)


def write_location(workdir: Path) -> None:
    """Record the work folder's absolute path in `<workdir>/.location` (atomically).

    Args:
        workdir: The work folder (absolute, resolved; it exists).

    Raises:
        WorkdirError: The file cannot be written (read-only folder, no space).
    """
    marker = workdir / MARKER_NAME
    try:
        _write_atomically(marker, WorkdirLocation(path=str(workdir)).model_dump_json() + "\n")
    except OSError as error:
        raise WorkdirError(f"{marker}: cannot record the work folder's location ({error.strerror or error})") from None


def workdir_from_recorded(recorded: str, relative: str) -> Path | None:
    """The work folder a recorded location implies, for a folder made before `.location` existed.

    Args:
        recorded: A stored path, ``file://`` URI or ``sqlite:///`` URL of something that lies at
            `relative` inside its work folder (e.g. ZenML's ``store.database``).
        relative: Its path relative to the work folder, with ``/`` separators
            (e.g. ``"zenml/local_stores/default_zen_store/zenml.db"``).

    Returns:
        The absolute work folder path, or None when `recorded` does not end with `relative`.
    """
    for scheme in ("sqlite:///", "file://"):
        if recorded.startswith(scheme):
            recorded = recorded[len(scheme) :]
            break
    suffix = "/" + relative.strip("/")
    if not recorded.startswith("/") or not recorded.endswith(suffix) or len(recorded) == len(suffix):
        return None
    return Path(recorded[: -len(suffix)])


def sqlite_rows(database: Path, sql: str) -> list[tuple]:
    """The rows of a read-only query, or [] when the file is missing, unreadable or lacks the table.

    For inferring an older folder's location: a store that cannot be read is not an error here
    (the command that uses it reports it).

    Args:
        database: A SQLite file (opened read-only; never created).
        sql: A SELECT statement.

    Returns:
        The rows, as tuples.
    """
    if not database.is_file():
        return []
    try:
        connection = sqlite3.connect(f"file:{quote(str(database))}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S)
    except sqlite3.Error:
        return []
    try:
        return connection.execute(sql).fetchall()
    except sqlite3.Error:
        return []
    finally:
        connection.close()


def relocate(
    workdir: Path, previous: Path | None, databases: Sequence[Path], yaml_files: Sequence[Path]
) -> Relocation | None:
    """Point a work folder's stores at the folder itself if it was moved or copied; record its place.

    When `previous` (the recorded location) differs from `workdir`, the existing `databases` and
    `yaml_files` are rewritten (each SQLite file in one transaction), then `.location` is written.
    A folder where it was recorded changes nothing. Missing stores are skipped (a folder where
    nothing ran yet). When the folder has no record and cannot be written (read-only, not moved),
    it is used as it is.

    Args:
        workdir: The work folder now (absolute, resolved; it exists).
        previous: Where it was recorded to be (`read_location`, or inferred for an older folder),
            None when unknown.
        databases: SQLite files inside the folder that record absolute paths.
        yaml_files: YAML files inside the folder that record absolute paths.

    Returns:
        What was rewritten, or None when the folder was not moved.

    Raises:
        WorkdirError: A moved folder's store or `.location` cannot be rewritten (read-only folder,
            locked or corrupt database); the message names the file.
    """
    if previous is None or previous == workdir:
        if not (workdir / MARKER_NAME).is_file():
            try:
                write_location(workdir)
            except WorkdirError:
                pass  # a read-only folder that was not moved works as it is; a later move is still inferred
        return None
    rewritten: dict[str, int] = {}
    try:
        for database in databases:
            if database.is_file():
                counts = rewrite_sqlite_prefix(database, previous, workdir)
                name = database.relative_to(workdir).as_posix()
                rewritten.update({f"{name}: {place}": count for place, count in counts.items()})
        for file in yaml_files:
            if file.is_file():
                count = rewrite_yaml_prefix(file, previous, workdir)
                if count:
                    rewritten[file.relative_to(workdir).as_posix()] = count
        write_location(workdir)
    except WorkdirError as error:
        raise WorkdirError(
            f"the work folder {workdir} was moved or copied from {previous}, and the paths its stores record "
            f"must be rewritten, but {error}"
        ) from None
    return Relocation(old=str(previous), new=str(workdir), rewritten=rewritten)
