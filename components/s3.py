"""S3 (and S3-compatible servers) behind components.storage: list a prefix, read an object.

Use components.storage (``list_files``, ``read_bytes``, ``root_is_dir``) rather
than this module; it only implements their ``s3://`` branches.

Configuration comes only from the standard AWS environment and config files,
which boto3 reads itself, never from this repository:

* endpoint: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (or ``endpoint_url``
  in the profile). When an endpoint other than AWS's is configured (MinIO,
  rclone serve s3, Ceph...), requests use path-style addressing
  (``http://host/bucket/key``), which every S3-compatible server understands.
* credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/
  ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` with ``~/.aws/credentials``, SSO,
  instance or container roles - boto3's usual chain.
* region: ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` or the profile; "us-east-1"
  when none is configured (S3-compatible servers ignore it).

Retries: transient failures (connection errors, timeouts, throttling, 5xx) are
retried by botocore in its "standard" retry mode - exponential backoff with
jitter, at most ``MAX_ATTEMPTS`` attempts in all, each connection attempt
limited to ``CONNECT_TIMEOUT_S`` and each read to ``READ_TIMEOUT_S``. The
standard ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` variables (or
``max_attempts`` / ``retry_mode`` in the profile) override those defaults.
A body that breaks off while it is being read (after botocore's retries are
over) is fetched again, with the same attempt budget.

One client per process: clients are thread-safe and hold the connection pool,
so all threads share one; a forked child builds its own (the cache is keyed on
the process id). Call ``reset_client()`` after changing the AWS environment.

Every failure is a components.errors.StorageError naming the URI and what
to do; a missing object is a MissingFileError. The S3 URI helpers
(``is_s3_uri``, ``parse_s3_uri``) live here; components.storage re-exports them.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any
from urllib.parse import urlparse

from components.errors import MissingFileError, StorageError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_ATTEMPTS",
    "READ_TIMEOUT_S",
    "S3AccessDeniedError",
    "S3BucketNotFoundError",
    "S3ConfigError",
    "S3ConnectionError",
    "S3CredentialsError",
    "client",
    "is_s3_uri",
    "list_keys",
    "list_objects",
    "parse_s3_uri",
    "prefix_has_objects",
    "read_object",
    "relative_key",
    "reset_client",
]

MAX_ATTEMPTS = 5  # requests per call in all (first try + 4 retries); AWS_MAX_ATTEMPTS overrides
RETRY_MODE = "standard"  # botocore retry mode; AWS_RETRY_MODE overrides
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
MAX_POOL_CONNECTIONS = 32  # parallel readers share the one client
DEFAULT_REGION = "us-east-1"
LIST_PAGE_SIZE = 1000  # the S3 maximum per ListObjectsV2 page

_ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
        "Forbidden",
    }
)
_NO_SUCH_BUCKET_CODES = frozenset({"NoSuchBucket"})
_NO_SUCH_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_MALFORMED_CODES = frozenset({"InvalidBucketName", "KeyTooLongError"})


class S3BucketNotFoundError(StorageError):
    """The bucket named by the URI does not exist at the configured endpoint."""


class S3AccessDeniedError(StorageError):
    """The server refused the credentials or the request (403)."""


class S3CredentialsError(StorageError):
    """No (or incomplete) AWS credentials are configured."""


class S3ConnectionError(StorageError):
    """The endpoint could not be reached or did not answer in time, after retries."""


class S3ConfigError(StorageError):
    """The AWS configuration cannot give an S3 client (e.g. an endpoint URL without http://)."""


# ---------------------------------------------------------------- URIs


def is_s3_uri(uri: str) -> bool:
    """Whether `uri` (a str or path) names S3: it starts with ``s3://``."""
    return str(uri).startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into its bucket and key.

    Args:
        uri: ``s3://bucket``, ``s3://bucket/`` or ``s3://bucket/a/b.png``.

    Returns:
        (bucket, key); the key is "" for the whole bucket.

    Raises:
        StorageError: `uri` is not an S3 URI, or names no valid bucket (``s3://``, ``s3:///key``).
    """
    uri = str(uri)
    if not is_s3_uri(uri):
        raise StorageError(f"{uri!r} is not an S3 URI; expected s3://bucket/prefix")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or any(character.isspace() for character in bucket):
        raise StorageError(f"malformed S3 URI {uri!r}: it names no valid bucket; expected s3://bucket/prefix")
    return bucket, key


# ---------------------------------------------------------------- the client

_lock = threading.Lock()
_cached: tuple[int, Any] | None = None  # (pid, client)
_fork_hook_registered = False


def _reinit_after_fork() -> None:
    # The parent's lock may have been held by another thread at fork time.
    global _lock, _cached
    _lock = threading.Lock()
    _cached = None


def _register_fork_hook() -> None:
    """Once per process, on first use (not at import): a forked child starts with a fresh lock and no client."""
    global _fork_hook_registered
    if _fork_hook_registered:
        return
    _fork_hook_registered = True  # two threads may both get here: the hook is idempotent
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reinit_after_fork)


def reset_client() -> None:
    """Forget this process's cached client: the next call builds one from the current AWS environment."""
    global _cached
    _register_fork_hook()
    with _lock:
        _cached = None


def _is_custom_endpoint(endpoint_url: str | None) -> bool:
    host = (urlparse(endpoint_url or "").hostname or "").lower()
    return not (host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn"))


def _profile_setting(core: Any, name: str) -> str | None:
    """A setting of the active AWS profile (~/.aws/config), or None (no profile, or not set there)."""
    try:
        value = core.get_scoped_config().get(name)
    except Exception:  # botocore.exceptions.ProfileNotFound: the client itself reports a bad profile
        return None
    return str(value) if value else None


def _new_client() -> Any:
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()  # a fresh session: boto3's default one is not thread-safe
    try:
        max_attempts = int(core.get_config_variable("max_attempts") or MAX_ATTEMPTS)
    except ValueError:
        max_attempts = MAX_ATTEMPTS
    # Only a mode the user set (AWS_RETRY_MODE, or retry_mode in the profile): botocore's own default is
    # "legacy" in 1.43 (the version s3fs's aiobotocore allows) and "standard" later.
    retry_mode = os.environ.get("AWS_RETRY_MODE") or _profile_setting(core, "retry_mode") or RETRY_MODE
    session = boto3.session.Session(botocore_session=core)
    config = Config(
        # "total_max_attempts" counts the first try, like AWS_MAX_ATTEMPTS; botocore's
        # "max_attempts" key would count retries only (N there means N + 1 requests).
        retries={"mode": retry_mode, "total_max_attempts": max(1, max_attempts)},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )
    region = session.region_name or DEFAULT_REGION
    made = session.client("s3", region_name=region, config=config)
    if _is_custom_endpoint(made.meta.endpoint_url):
        # S3-compatible servers: bucket in the path, not in the host name.
        made = session.client("s3", region_name=region, config=config.merge(Config(s3={"addressing_style": "path"})))
    return made


def client() -> Any:
    """This process's boto3 S3 client, shared by its threads.

    Built on first use from the AWS environment (see the module docstring), rebuilt in a forked child.

    Returns:
        A ``botocore`` S3 client with standard-mode retries, the timeouts above and path-style
        addressing when the endpoint is not AWS's.

    Raises:
        S3ConfigError: the AWS configuration gives no client (e.g. an endpoint URL without ``http://``).
    """
    global _cached
    pid = os.getpid()
    _register_fork_hook()
    cached = _cached
    if cached is not None and cached[0] == pid:
        return cached[1]
    with _lock:
        if _cached is None or _cached[0] != pid:
            try:
                _cached = (pid, _new_client())
            except Exception as error:  # noqa: BLE001  (botocore raises ValueError and its own types)
                raise S3ConfigError(
                    f"cannot create an S3 client from the AWS configuration ({type(error).__name__}: {error}); "
                    "check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 (a full http:// or https:// URL), "
                    "AWS_DEFAULT_REGION and AWS_PROFILE"
                ) from error
        return _cached[1]


def _client_for(uri: str) -> Any:
    """client(), with a configuration error naming the URI that needed it."""
    try:
        return client()
    except S3ConfigError as error:
        raise S3ConfigError(f"{uri}: {error}") from error.__cause__


def _endpoint() -> str:
    try:
        return client().meta.endpoint_url
    except Exception:  # noqa: BLE001  (only used to word an error message)
        return "the configured endpoint"


# ---------------------------------------------------------------- errors


def _translate(error: Exception, uri: str, bucket: str, action: str) -> StorageError:
    """A StorageError for a botocore exception raised while `action`ing `uri`."""
    from botocore.exceptions import (
        ClientError,
        CredentialRetrievalError,
        HTTPClientError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    if isinstance(error, StorageError):
        return error
    if isinstance(error, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return S3CredentialsError(
            f"{uri}: cannot {action}: no usable AWS credentials ({error}). Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials, or run with an instance/container role"
        )
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return S3ConnectionError(
            f"{uri}: cannot {action}: S3 endpoint {_endpoint()} unreachable or not answering after retries "
            f"({type(error).__name__}: {error}). Check that the server runs and AWS_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL_S3 point at it"
        )
    if isinstance(error, ParamValidationError):
        return StorageError(f"{uri}: malformed S3 URI or bucket name {bucket!r} ({error})")
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = details.get("Message") or error
        if code in _NO_SUCH_BUCKET_CODES:
            return S3BucketNotFoundError(
                f"{uri}: bucket {bucket!r} does not exist at {_endpoint()}. Check the bucket name in the URI "
                "and that AWS_ENDPOINT_URL / the region point at the right server"
            )
        if code in _ACCESS_DENIED_CODES or status == 403:
            return S3AccessDeniedError(
                f"{uri}: cannot {action}: access to bucket {bucket!r} denied ({code}: {message}). Check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may read the bucket"
                " (s3:ListBucket, s3:GetObject)"
            )
        if code in _MALFORMED_CODES:
            return StorageError(f"{uri}: malformed S3 URI ({code}: {message})")
        return StorageError(f"{uri}: cannot {action}: S3 error {code or status} ({message})")
    return StorageError(f"{uri}: cannot {action}: {type(error).__name__}: {error}")


def _prefix(key: str) -> str:
    """The key of a root URI as a listing prefix: "" or "a/b/" (so "ieee" never lists "ieee2/...")."""
    key = key.strip("/")
    return f"{key}/" if key else ""


def relative_key(prefix: str, key: str) -> str | None:
    """An object key relative to a listing prefix, or None for a folder marker.

    Args:
        prefix: the listing prefix, "" or ending in "/" ("a/b/").
        key: a key returned by the listing ("a/b/c.png").

    Returns:
        `key` without `prefix` ("c.png"), or None for a directory marker ("a/b/", "a/b/c/":
        zero-byte keys that consoles create for folders) or the prefix itself.
    """
    relative = key[len(prefix) :] if key.startswith(prefix) else key
    relative = relative.lstrip("/")
    if not relative or relative.endswith("/"):
        return None
    return relative


def _iterate_keys(root_uri: str, page_size: int):
    """Relative keys below the root, markers ("folder/") skipped, lazily page by page."""
    for relative, _ in _iterate_objects(root_uri, page_size):
        yield relative


def _iterate_objects(root_uri: str, page_size: int):
    """(relative key, ListObjectsV2 item) below the root, markers ("folder/") skipped, lazily page by page."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_uri(root_uri)
    prefix = _prefix(key)
    try:
        paginator = _client_for(root_uri).get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": int(page_size)})
        for page in pages:
            for item in page.get("Contents", ()):
                relative = relative_key(prefix, item["Key"])
                if relative is not None:
                    yield relative, item
    except (BotoCoreError, ClientError) as error:
        raise _translate(error, root_uri, bucket, "list objects") from error


# ---------------------------------------------------------------- API


def list_keys(root_uri: str, page_size: int = LIST_PAGE_SIZE) -> list[str]:
    """Every object key below an S3 prefix, relative to it.

    Follows every page of ListObjectsV2. Directory markers (keys ending in "/") are skipped.

    Args:
        root_uri: ``s3://bucket`` or ``s3://bucket/prefix`` ("prefix" lists "prefix/...", never "prefix2/...").
        page_size: keys per ListObjectsV2 request (at most 1000; tests use small pages).

    Returns:
        Keys relative to the prefix ("images/a.png"), in listing (lexicographic) order.

    Raises:
        StorageError: a malformed URI, or the bucket is missing (S3BucketNotFoundError), access is
            denied (S3AccessDeniedError), credentials are missing (S3CredentialsError) or the
            endpoint does not answer after retries (S3ConnectionError).
    """
    return list(_iterate_keys(root_uri, page_size))


def list_objects(root_uri: str, page_size: int = LIST_PAGE_SIZE) -> list[dict[str, Any]]:
    """Every object below an S3 prefix with what the listing says about it (no object is read).

    Args:
        root_uri: ``s3://bucket`` or ``s3://bucket/prefix``.
        page_size: keys per ListObjectsV2 request.

    Returns:
        One dict per object, in listing order: ``key`` (relative to the prefix), ``size`` (bytes),
        ``etag`` (the server's ETag, quotes removed; "" when absent) and ``last_modified``
        (ISO 8601, UTC; "" when absent).

    Raises:
        StorageError: as for list_keys.
    """
    found = []
    for relative, item in _iterate_objects(root_uri, page_size):
        modified = item.get("LastModified")
        found.append(
            {
                "key": relative,
                "size": int(item.get("Size", 0)),
                "etag": str(item.get("ETag", "")).strip('"'),
                "last_modified": modified.isoformat() if modified is not None else "",
            }
        )
    return found


def prefix_has_objects(root_uri: str, page_size: int = LIST_PAGE_SIZE) -> bool:
    """Whether at least one object (not a mere directory marker) lies below an S3 prefix.

    Args:
        root_uri: ``s3://bucket`` or ``s3://bucket/prefix``.
        page_size: keys per ListObjectsV2 request; listing stops at the first object found.

    Returns:
        True when the prefix holds an object.

    Raises:
        StorageError: as for list_keys.
    """
    for _ in _iterate_keys(root_uri, page_size):
        return True
    return False


def read_object(uri: str, first_bytes: int | None = None) -> bytes:
    """Read a whole S3 object; a body that breaks off is fetched again, within the retry budget.

    The budget is the client's total attempts (MAX_ATTEMPTS unless AWS_MAX_ATTEMPTS says otherwise).

    Args:
        uri: ``s3://bucket/key``.
        first_bytes: Read only the object's first bytes (a ranged GET), e.g. to tell its format; None: all.

    Returns:
        The object's bytes.

    Raises:
        MissingFileError: the key does not exist, or the URI names a bucket or folder.
        StorageError: any other failure, as for list_keys; S3ConnectionError when the body
            broke off on every attempt.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise MissingFileError(f"{uri} names a bucket or folder, not an object")
    s3_client = _client_for(uri)
    attempts = max(1, int(s3_client.meta.config.retries.get("total_max_attempts") or MAX_ATTEMPTS))
    for attempt in range(1, attempts + 1):
        try:
            ranged = {"Range": f"bytes=0-{first_bytes - 1}"} if first_bytes else {}
            response = s3_client.get_object(Bucket=bucket, Key=key, **ranged)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if ranged and code == "InvalidRange":  # an empty object has no first byte
                return b""
            if code in _NO_SUCH_KEY_CODES:
                raise MissingFileError(f"{uri} does not exist (no object {key!r} in bucket {bucket!r})") from None
            raise _translate(error, uri, bucket, "read the object") from error
        except BotoCoreError as error:
            raise _translate(error, uri, bucket, "read the object") from error
        try:
            with response["Body"] as body:
                return body.read()
        except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError, Urllib3Error, OSError) as error:
            if attempt == attempts:
                raise S3ConnectionError(
                    f"{uri}: the object's body broke off {attempts} time(s) while being read "
                    f"({type(error).__name__}: {error})"
                ) from error
            time.sleep(min(20.0, random.uniform(0, 2 ** (attempt - 1))))  # standard-mode style backoff
    raise AssertionError("unreachable")
