"""Retraining when the data changes: a cheap listing first, the content hash only for what changed.

`cxr train --if-data-changed` (cxr/retraining.py) asks one question before it
trains: is the data the one the champion was trained on? Answering it with the
dataset version (components.manifest.dataset_version) alone would read every
file of every source on each scheduled run. Here it is answered in three
steps, each cheaper than the next:

1. The *listing* of the sources (DataListing): per file its relative path, size
   and modification time (local disk: ``os.stat``) or ETag and LastModified (S3
   ListObjectsV2), no file read. With what else decides the manifest (task,
   source options, image cap, seed, external sources) it has a fingerprint. The
   champion's training run records its listing (LISTING_ARTIFACT); an equal
   fingerprint means nothing changed: skip without reading a file.
2. Otherwise the manifest is rebuilt with a FileInfoCache (a JSON file in the
   work folder): a file whose path, size and stamp are in the cache is not read
   again; only new or changed files are (their hashes, sizes, modes).
3. Its dataset version is compared with the champion's (tag
   components.registry.TAG_DATASET_VERSION): equal (a file touched but not
   changed, a renamed metadata column the adapter ignores) -> skip; different
   -> train.

`decide` holds the rules; RetrainingDecision is what each scheduled run
records (one line printed, one JSON line appended to DECISIONS_FILE, tags on
the MLflow run when it trains).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from components import s3
from components.config import RunConfig
from components.errors import StorageError
from components.image_info import NO_FILE, describe_uris
from components.labels import (
    EXCLUDE_DUPLICATE,
    EXCLUDE_LATERAL,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_OUT_OF_TASK,
    EXCLUDE_UNKNOWN_FINDING,
    EXCLUDE_UNLABELLED,
)
from components.manifest import build_manifest, dataset_version
from components.privacy import with_privacy
from components.splitting import EXCLUDE_OVER_CAP, TRAINING, evaluated_sources, limit_images
from components.storage import escaped_name, is_s3_uri

__all__ = [
    "ALREADY_TRAINED",
    "CHAMPION_UNVERSIONED",
    "CONTENT_UNCHANGED",
    "DATA_CHANGED",
    "DECISIONS_FILE",
    "LISTING_ARTIFACT",
    "LISTING_UNCHANGED",
    "NO_CHAMPION",
    "CachedDescriber",
    "Champion",
    "DataListing",
    "FileEntry",
    "FileInfoCache",
    "ListingChanges",
    "RetrainingDecision",
    "SourceListing",
    "append_decision",
    "compare_listings",
    "data_listing",
    "decide",
    "list_source",
    "manifest_fingerprint_config",
    "training_manifest",
]

# Where the listing a version was trained on is logged in its MLflow run.
LISTING_ARTIFACT = "evaluation/data_listing.json"
# Below the work folder's reports folder: one JSON line per decision.
DECISIONS_FILE = "retraining_decisions.jsonl"
# Bump when the listing format or what a file's cached description holds changes.
LISTING_FORMAT = 1

# Why a run trained or not (RetrainingDecision.reason).
NO_CHAMPION = "no_champion"  # train: nothing to compare with
CHAMPION_UNVERSIONED = "champion_without_dataset_version"  # train: the champion records no dataset version
LISTING_UNCHANGED = "listing_unchanged"  # skip: same files, sizes and stamps as the champion's listing
CONTENT_UNCHANGED = "content_unchanged"  # skip: the listing changed, the dataset version did not
ALREADY_TRAINED = "already_trained"  # skip: a registered version (not the champion) was trained on this data
DATA_CHANGED = "data_changed"  # train: the dataset version differs from the champion's


# ---------------------------------------------------------------- listings


class FileEntry(BaseModel):
    """One file of a source as its listing describes it (nothing read)."""

    path: str  # relative to the source root, POSIX ("images/a.png")
    size: int  # bytes
    stamp: str  # local: "mtime_ns=<int>"; S3: "etag=<ETag> modified=<ISO 8601>"


class SourceListing(BaseModel):
    """Every visible file below one source root."""

    name: str
    root: str  # absolute local path or s3://bucket/prefix
    files: list[FileEntry]  # sorted by path

    def uri(self, path: str) -> str:
        """The URI the manifest gives the file at `path` (components.storage.child_uri's form).

        Args:
            path: relative POSIX path of a listed file.

        Returns:
            ``<root>/<path>``: an absolute local path or an ``s3://`` URI.
        """
        if is_s3_uri(self.root):
            return self.root.rstrip("/") + "/" + path
        return os.path.join(self.root, *path.split("/"))


class DataListing(BaseModel):
    """The listing of every source of a run config, and what else decides its manifest."""

    format: int = LISTING_FORMAT
    config: dict[str, Any]  # manifest_fingerprint_config: task, source options, cap, seed, external sources
    sources: list[SourceListing]

    @property
    def fingerprint(self) -> str:
        """16 hex digits of a SHA-256 over the whole listing: equal listings, equal fingerprints."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def file_count(self) -> int:
        """Files listed, over all sources."""
        return sum(len(source.files) for source in self.sources)

    def by_uri(self) -> dict[str, FileEntry]:
        """Every listed file by the URI the manifest gives it.

        Returns:
            {uri: FileEntry}; a file listed by two sources (overlapping roots) appears once.
        """
        return {source.uri(entry.path): entry for source in self.sources for entry in source.files}


def _hidden(part: str) -> bool:
    return part.startswith(".")


def _list_local(root: str) -> list[FileEntry]:
    """Visible files below a local root; symlinked folders are followed once (their targets' stat)."""
    if not os.path.isdir(root):
        raise StorageError(f"source root {root} is not a directory")
    found, seen = [], set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a symlink cycle, or two links to one folder: list it once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(name for name in dirs if not _hidden(name))
        base = os.path.relpath(current, root).replace(os.sep, "/")
        for name in files:
            if _hidden(name):
                continue
            try:
                status = os.stat(os.path.join(current, name))
            except FileNotFoundError:  # deleted while listing, or a dangling symlink: not there
                continue
            # A name that is not UTF-8 as the manifest shows it (its row is excluded, never read): JSON-safe.
            relative = escaped_name(name if base == "." else f"{base}/{name}")
            found.append(FileEntry(path=relative, size=status.st_size, stamp=f"mtime_ns={status.st_mtime_ns}"))
    return sorted(found, key=lambda entry: entry.path)


def list_source(root: str) -> list[FileEntry]:
    """The listing of one source root: path, size and stamp of every visible file, none read.

    Hidden files and folders (a part starting with ".") are left out, as components.storage.list_files does.

    Args:
        root: an absolute local directory or ``s3://bucket/prefix``.

    Returns:
        FileEntry per file, sorted by path. Local stamps are the modification time in
        nanoseconds; S3 stamps the ETag and LastModified of ListObjectsV2.

    Raises:
        StorageError: the local root is not a directory, or listing the S3 prefix failed
            (missing bucket, access denied, endpoint unreachable: components.s3).
    """
    if not is_s3_uri(root):
        return _list_local(root)
    entries = [
        FileEntry(path=item["key"], size=item["size"], stamp=f"etag={item['etag']} modified={item['last_modified']}")
        for item in s3.list_objects(root)
        if not any(_hidden(part) for part in item["key"].split("/"))
    ]
    return sorted(entries, key=lambda entry: entry.path)


def manifest_fingerprint_config(config: RunConfig) -> dict[str, Any]:
    """What besides the files decides a run's manifest, as JSON-able values.

    Args:
        config: the run config (source roots already absolute).

    Returns:
        {"task", "seed", "max_images", "external_sources", "sources"}: a change in any of them
        makes the listing differ, so the manifest is rebuilt (from the cache) and compared.
    """
    return {
        "task": config.task,
        "seed": config.seed,
        "max_images": config.data.max_images,
        "external_sources": list(config.evaluation.external_sources),
        "sources": [source.model_dump(mode="json") for source in config.data.sources],
    }


def _absolute_root(root: str) -> str:
    return root if is_s3_uri(root) else os.path.abspath(root)


def data_listing(config: RunConfig) -> DataListing:
    """The listing of every source of a run config (list_source each), nothing read.

    Args:
        config: the run config; relative local roots are taken from the current folder.

    Returns:
        The DataListing, sources in config order.

    Raises:
        StorageError: a source root cannot be listed (list_source), naming the source.
    """
    sources = []
    for source in config.data.sources:
        root = _absolute_root(source.root)
        try:
            files = list_source(root)
        except StorageError as error:
            raise type(error)(f"source {source.name!r}: {error}") from error
        sources.append(SourceListing(name=source.name, root=root, files=files))
    return DataListing(config=manifest_fingerprint_config(config), sources=sources)


def relisted(listing: DataListing) -> DataListing:
    """The same sources listed again now (to see which files changed since `listing` was taken).

    Args:
        listing: an earlier DataListing.

    Returns:
        A DataListing with the same config and source names and roots, files as they are now.

    Raises:
        StorageError: a source root cannot be listed any more.
    """
    sources = [SourceListing(name=s.name, root=s.root, files=list_source(s.root)) for s in listing.sources]
    return DataListing(config=listing.config, sources=sources)


class ListingChanges(BaseModel):
    """Files added, changed (size or stamp) and removed between two listings, as URIs."""

    added: list[str]
    changed: list[str]
    removed: list[str]

    @property
    def none(self) -> bool:
        """Whether no file was added, changed or removed."""
        return not (self.added or self.changed or self.removed)


def compare_listings(before: DataListing, after: DataListing) -> ListingChanges:
    """What changed in the files between two listings (the config part is not compared here).

    Args:
        before: e.g. the listing the champion was trained on.
        after: e.g. the listing now.

    Returns:
        Sorted URIs: in `after` only (added), in both with another size or stamp (changed), in `before` only.
    """
    old, new = before.by_uri(), after.by_uri()
    return ListingChanges(
        added=sorted(set(new) - set(old)),
        changed=sorted(uri for uri in set(new) & set(old) if new[uri] != old[uri]),
        removed=sorted(set(old) - set(new)),
    )


# ---------------------------------------------------------------- the file cache


# Reasons a row gets after its file was read and found usable: its file description is the plain read.
_REASONS_AFTER_READING = frozenset(
    {"", EXCLUDE_LATERAL, EXCLUDE_UNLABELLED, EXCLUDE_UNKNOWN_FINDING, EXCLUDE_OUT_OF_TASK, EXCLUDE_DUPLICATE}
    | {EXCLUDE_OVER_CAP}
)


def _plain(value: Any) -> Any:
    """A manifest cell as a JSON value (numpy integers from a DataFrame become int)."""
    return value.item() if hasattr(value, "item") else value


class FileInfoCache:
    """What reading each file gave (components.image_info.describe_uri), keyed by its listing entry.

    Stored as one JSON file (in the work folder): ``{"format", "files": {uri: {"size", "stamp",
    "info"}}, "versions": {listing fingerprint: dataset version}}``. An entry is used only while the
    file's size and stamp are those it was read with; the stamp is taken before the file is read,
    so a file changed during a read is read again next time.

    Args:
        path: the JSON file; a missing or unreadable one starts an empty cache.
    """

    MAX_VERSIONS = 64  # listing fingerprints remembered

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, str] = {}
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(stored, dict) and stored.get("format") == LISTING_FORMAT:
            self.files = dict(stored.get("files") or {})
            self.versions = dict(stored.get("versions") or {})

    def lookup(self, uri: str, entry: FileEntry | None) -> dict[str, Any] | None:
        """The cached description of `uri` when it was read with the size and stamp of `entry`.

        Args:
            uri: the file's URI.
            entry: its listing entry now (None: not listed, never cached).

        Returns:
            The describe_uri dict, or None when it must be read.
        """
        cached = self.files.get(uri)
        if entry is None or cached is None:
            return None
        if cached.get("size") != entry.size or cached.get("stamp") != entry.stamp:
            return None
        return cached.get("info")

    def store(self, uri: str, entry: FileEntry, info: dict[str, Any]) -> None:
        """Remember what reading `uri` gave while it had `entry`'s size and stamp.

        Args:
            uri: the file's URI.
            entry: its listing entry, taken before it was read.
            info: the describe_uri dict.
        """
        self.files[uri] = {"size": entry.size, "stamp": entry.stamp, "info": info}

    def forget_missing(self, listing: DataListing) -> None:
        """Drop the entries of files that are no longer listed below any root of `listing`.

        Args:
            listing: the listing now; entries of other roots (other configs) are kept.
        """
        listed = listing.by_uri()
        roots = [source.uri("") for source in listing.sources]
        self.files = {
            uri: cached
            for uri, cached in self.files.items()
            if uri in listed or not any(uri.startswith(root) for root in roots)
        }

    def remember_version(self, fingerprint: str, version: str) -> None:
        """Record the dataset version of the manifest built from the listing with `fingerprint`.

        Args:
            fingerprint: DataListing.fingerprint.
            version: components.manifest.dataset_version of that manifest (16 hex digits).
        """
        self.versions.pop(fingerprint, None)
        self.versions[fingerprint] = version
        while len(self.versions) > self.MAX_VERSIONS:
            self.versions.pop(next(iter(self.versions)))

    def learn_from_manifest(self, manifest: pd.DataFrame, before: DataListing, after: DataListing) -> int:
        """Remember what a training run's ingest read, so the next check reads only new or changed files.

        Only files whose listing entry was the same before and after the run (not changed while
        it read them) and whose row records a usable read (a sha256, and no reason other than
        the ones given after reading: lateral, label, task, duplicate, cap) are stored.

        Args:
            manifest: the manifest the run's ingest step built (MANIFEST_COLUMNS).
            before: the listing taken before the run (check_data's).
            after: a listing taken after the run.

        Returns:
            How many files were stored.
        """
        now = after.by_uri()
        stable = {uri: entry for uri, entry in before.by_uri().items() if now.get(uri) == entry}
        file_columns = [key for key in NO_FILE if key not in ("exclusion_reason", "exclusion_detail")]
        stored = 0
        for row in manifest.to_dict("records"):
            entry = stable.get(str(row["uri"]))
            if entry is None or not row["sha256"] or row["exclusion_reason"] not in _REASONS_AFTER_READING:
                continue
            info = {key: _plain(row[key]) for key in file_columns if key in row}
            self.store(str(row["uri"]), entry, {**NO_FILE, **info, "exclusion_reason": "", "exclusion_detail": ""})
            stored += 1
        return stored

    def save(self) -> None:
        """Write the cache (to a temporary file first, then renamed over the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"format": LISTING_FORMAT, "files": self.files, "versions": self.versions}
        temporary.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(temporary, self.path)


class CachedDescriber:
    """A `describe` for components.manifest.build_manifest that reads only files the cache lacks.

    Args:
        cache: the FileInfoCache; updated with every file read (call ``cache.save()`` after).
        listing: the listing taken before the manifest is built (its sizes and stamps key the cache).
    """

    def __init__(self, cache: FileInfoCache, listing: DataListing) -> None:
        self.cache = cache
        self.entries = listing.by_uri()
        self.files_read = 0  # files read by the last calls, all together

    def __call__(self, uris: Sequence[str], workers: int = 1, progress: bool = False) -> list[dict[str, Any]]:
        """Describe `uris` as describe_uris does, from the cache where the listing entry matches.

        Args:
            uris: local paths or ``s3://`` URIs.
            workers: parallel reads for the files not cached (describe_uris).
            progress: show a progress bar while reading them.

        Returns:
            One describe_uri dict per URI, in order.

        Raises:
            StorageError: a file exists but cannot be read (describe_uris).
        """
        found = {uri: self.cache.lookup(uri, self.entries.get(uri)) for uri in uris}
        missing = [uri for uri, info in found.items() if info is None]
        if missing:
            for uri, info in zip(missing, describe_uris(missing, workers=workers, progress=progress), strict=True):
                found[uri] = info
                entry = self.entries.get(uri)
                if entry is not None and info["exclusion_reason"] != EXCLUDE_MISSING_FILE:
                    self.cache.store(uri, entry, info)
            self.files_read += len(missing)
        return [found[uri] for uri in uris]


def training_manifest(config: RunConfig, describe: Callable[..., list[dict[str, Any]]] = describe_uris) -> pd.DataFrame:
    """The manifest the training pipeline's ingest step builds for `config` (steps/ingest.py, purpose training).

    Args:
        config: the run config (source roots absolute, as cxr.runner.resolved_config gives them).
        describe: reads the files (build_manifest's `describe`; a CachedDescriber reads only what changed).

    Returns:
        The manifest, capped at ``data.max_images`` as ingest caps it: its dataset_version is the one a
        training run on this data would register.

    Raises:
        SourceError, FileNotFoundError, StorageError: as components.manifest.build_manifest.
    """
    held_out = evaluated_sources(
        [source.name for source in config.data.sources], config.evaluation.external_sources, TRAINING
    )
    manifest = with_privacy(
        build_manifest(config.data.sources, config.task, workers=config.data.workers, describe=describe),
        config.data,
    )
    return limit_images(manifest, config.data.max_images, config.seed, held_out_sources=held_out)


def current_dataset_version(config: RunConfig, listing: DataListing, cache: FileInfoCache) -> tuple[str, int]:
    """The dataset version of the data now, reading only files the cache lacks (and none when it knows the listing).

    Args:
        config: the run config (source roots absolute).
        listing: data_listing(config), taken just before.
        cache: the work folder's FileInfoCache; updated and saved.

    Returns:
        (dataset version, files read).
    """
    known = cache.versions.get(listing.fingerprint)
    if known is not None:
        return known, 0
    describer = CachedDescriber(cache, listing)
    version = dataset_version(training_manifest(config, describer))
    cache.forget_missing(listing)
    cache.remember_version(listing.fingerprint, version)
    cache.save()
    return version, describer.files_read


# ---------------------------------------------------------------- the decision


class Champion(BaseModel):
    """What the registry says about the version a run would replace."""

    model_name: str
    version: str
    dataset_version: str | None  # its TAG_DATASET_VERSION (None: registered without one)
    listing: DataListing | None = None  # LISTING_ARTIFACT of its run (None: not recorded)


class RetrainingDecision(BaseModel):
    """Whether a `cxr train --if-data-changed` run trains, and why (printed as one line, recorded)."""

    at: str  # UTC, ISO 8601
    run_name: str  # the run config's name
    model_name: str
    train: bool
    reason: Literal[
        "no_champion",
        "champion_without_dataset_version",
        "listing_unchanged",
        "content_unchanged",
        "already_trained",
        "data_changed",
    ]
    detail: str
    champion_version: str | None
    champion_dataset_version: str | None
    dataset_version: str | None  # the data now (None: not computed, e.g. no champion to compare with)
    files_listed: int
    added: int | None  # against the champion's listing (None: it recorded none)
    changed: int | None
    removed: int | None
    files_read: int  # files read to decide (0 when the listing settled it)
    listing_fingerprint: str
    trained_version: str | None = None  # for ALREADY_TRAINED: the version that holds this data

    def line(self) -> str:
        """The decision as one line for the log of a scheduled run.

        Returns:
            ``retraining: TRAIN|SKIP (<reason>) <model> champion v<N> [<version>] data <version>; files
            +added ~changed -removed of <listed>, <read> read: <detail>``.
        """
        champion = (
            f"v{self.champion_version} [{self.champion_dataset_version or '?'}]" if self.champion_version else "none"
        )
        if self.champion_version is None or self.champion_dataset_version is None:
            counts = f"{self.files_listed} listed"
        elif self.added is None:
            counts = f"{self.files_listed} listed (no listing recorded with the champion)"
        else:
            counts = f"+{self.added} ~{self.changed} -{self.removed} of {self.files_listed}"
        return (
            f"retraining: {'TRAIN' if self.train else 'SKIP'} ({self.reason}) {self.model_name} champion {champion} "
            f"data {self.dataset_version or '?'}; files {counts}, {self.files_read} read: {self.detail}"
        )

    def mlflow_tags(self) -> dict[str, str]:
        """The decision as MLflow run tags (``retraining.*``), set on the run that trained.

        Returns:
            {tag: value}, values as text.
        """
        values = self.model_dump(mode="json", exclude={"at", "run_name", "model_name", "train"})
        return {f"retraining.{key}": "" if value is None else str(value) for key, value in values.items()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def decide(
    run_name: str,
    model_name: str,
    listing: DataListing,
    champion: Champion | None,
    version_now: Callable[[], tuple[str, int]],
    trained_on: Callable[[str], str | None] = lambda version: None,
) -> RetrainingDecision:
    """Train or skip, and why, reading files only when the listing cannot settle it.

    Rules, in order:

    * no champion -> train (NO_CHAMPION); a champion without a dataset version tag -> train
      (CHAMPION_UNVERSIONED). The data is not read for either.
    * the champion's recorded listing equals `listing` (files, sizes, stamps and the config that
      decides the manifest) -> skip (LISTING_UNCHANGED), no file read.
    * otherwise the dataset version now (`version_now`) is compared with the champion's: equal -> skip
      (CONTENT_UNCHANGED: touched, renamed back, or no listing was recorded); different and another
      registered version was trained on exactly this data (`trained_on`) -> skip (ALREADY_TRAINED: it
      was not promoted; training again on the same data would repeat it); different -> train (DATA_CHANGED).

    Args:
        run_name: the run config's name (recorded).
        model_name: the registered model.
        listing: data_listing of the run config, now.
        champion: the champion (None when there is none).
        version_now: returns (dataset version now, files read to compute it); called only when needed.
        trained_on: a dataset version -> the registered version trained on it, or None.

    Returns:
        The RetrainingDecision.
    """
    base: dict[str, Any] = {
        "at": _now(),
        "run_name": run_name,
        "model_name": model_name,
        "champion_version": champion.version if champion else None,
        "champion_dataset_version": champion.dataset_version if champion else None,
        "files_listed": listing.file_count,
        "listing_fingerprint": listing.fingerprint,
        "added": None,
        "changed": None,
        "removed": None,
        "dataset_version": None,
        "files_read": 0,
    }
    if champion is None:
        detail = f"no version of {model_name!r} holds the alias champion: nothing to compare the data with"
        return RetrainingDecision(**base, train=True, reason=NO_CHAMPION, detail=detail)
    if not champion.dataset_version:
        detail = f"champion version {champion.version} records no dataset version: cannot tell what it was trained on"
        return RetrainingDecision(**base, train=True, reason=CHAMPION_UNVERSIONED, detail=detail)
    if champion.listing is not None:
        changes = compare_listings(champion.listing, listing)
        base.update(added=len(changes.added), changed=len(changes.changed), removed=len(changes.removed))
        if champion.listing.fingerprint == listing.fingerprint:
            detail = "same files, sizes and modification stamps as the champion's training data; no file read"
            base["dataset_version"] = champion.dataset_version
            return RetrainingDecision(**base, train=False, reason=LISTING_UNCHANGED, detail=detail)
        what = "the files" if not changes.none else "the data config (task, sources, cap, seed or external sources)"
        detail = f"{what} changed since the champion's listing"
    else:
        detail = "the champion's training run recorded no listing"
    version, read = version_now()
    base.update(dataset_version=version, files_read=read)
    if version == champion.dataset_version:
        detail += f"; the content is the same (dataset version {version}), e.g. files touched without a change"
        return RetrainingDecision(**base, train=False, reason=CONTENT_UNCHANGED, detail=detail)
    earlier = trained_on(version)
    if earlier is not None and earlier != champion.version:
        detail += f"; version {earlier} was already trained on dataset {version} and not promoted"
        return RetrainingDecision(**base, train=False, reason=ALREADY_TRAINED, detail=detail, trained_version=earlier)
    detail += f"; dataset version {version} differs from the champion's {champion.dataset_version}"
    return RetrainingDecision(**base, train=True, reason=DATA_CHANGED, detail=detail)


def append_decision(decision: RetrainingDecision, reports_dir: str | Path) -> Path:
    """Append the decision as one JSON line to ``<reports_dir>/retraining_decisions.jsonl``.

    Args:
        decision: the RetrainingDecision.
        reports_dir: the work folder's reports folder (created when missing).

    Returns:
        The JSONL file.
    """
    path = Path(reports_dir) / DECISIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(decision.model_dump_json() + "\n")
    return path
