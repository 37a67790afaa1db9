"""Pseudonymous patient ids: a keyed hash in place of each patient id, when the run config asks for it.

With ``data.pseudonymize_patient_ids: true`` the manifest's ``patient_id``
column (``<source>:<id>``) becomes ``<source>:p<16 hex digits>``, the first 64
bits of HMAC-SHA256(key, id): the same id always gives the same pseudonym
under one key, so the images of one patient stay together in the
patient-level split and the leakage checks (components.leakage) still group
them; without the key the ids cannot be recovered, nor tested by hashing
guesses. The key comes from the environment variable CXR_PSEUDONYMIZATION_KEY
(at least MIN_KEY_LENGTH characters), never from the run config or the repo:
a run with the option on and no key stops with a ConfigError saying so.
Everything written after the manifest (splits, reports, MLflow, ZenML
artifacts) then carries only pseudonyms. Keep the key: the same data
ingested under another key gets other pseudonyms, hence another dataset
version.

Identifying DICOM tags (names, birth dates...) are never read at all
(components.dicom); this module is about the one identifier the pipeline
needs, the patient id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

import pandas as pd

from components.config import ConfigError, DataConfig

__all__ = [
    "KEY_VARIABLE",
    "MIN_KEY_LENGTH",
    "pseudonym",
    "pseudonymization_key",
    "pseudonymize_manifest",
    "with_privacy",
]

KEY_VARIABLE = "CXR_PSEUDONYMIZATION_KEY"
# 16 characters: a key much shorter could be guessed by hashing the few ids a hospital uses.
MIN_KEY_LENGTH = 16
_DIGITS = 16  # hex digits kept: 64 bits, no collision expected below billions of patients


def pseudonymization_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The pseudonymisation key, from the environment.

    Args:
        environ: Where to look (default os.environ).

    Returns:
        The key's UTF-8 bytes.

    Raises:
        ConfigError: CXR_PSEUDONYMIZATION_KEY is unset, blank or shorter than MIN_KEY_LENGTH.
    """
    value = (os.environ if environ is None else environ).get(KEY_VARIABLE, "")
    if not value.strip():
        raise ConfigError(
            f"data.pseudonymize_patient_ids is true but {KEY_VARIABLE} is not set: export a secret key of at "
            f"least {MIN_KEY_LENGTH} characters (keep it out of the repo, and keep it: another key gives other "
            "pseudonyms)"
        )
    if len(value) < MIN_KEY_LENGTH:
        raise ConfigError(f"{KEY_VARIABLE} has {len(value)} characters; at least {MIN_KEY_LENGTH} are needed")
    return value.encode("utf-8")


def pseudonym(patient_id: str, key: bytes) -> str:
    """The pseudonym of one patient id.

    Args:
        patient_id: The id as the source gives it (without the source prefix).
        key: pseudonymization_key().

    Returns:
        ``p`` then the first 16 hex digits of HMAC-SHA256(key, patient_id).
    """
    digest = hmac.new(key, patient_id.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return f"p{digest[:_DIGITS]}"


def pseudonymize_manifest(manifest: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """A manifest whose patient ids are pseudonyms, the source prefix kept.

    Args:
        manifest: A manifest (components.manifest.MANIFEST_COLUMNS); not changed.
        key: pseudonymization_key().

    Returns:
        A copy whose ``patient_id`` ``<source>:<id>`` is ``<source>:<pseudonym(id)>``.
    """
    result = manifest.copy()
    prefixes = result["source"].astype(str) + ":"
    result["patient_id"] = [
        f"{prefix}{pseudonym(value[len(prefix) :] if value.startswith(prefix) else value, key)}"
        for prefix, value in zip(prefixes, result["patient_id"].astype(str), strict=True)
    ]
    return result


def with_privacy(manifest: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """The manifest as the run config's privacy settings want it (ingest applies this to what it builds).

    Args:
        manifest: The manifest build_manifest gave.
        data: The run config's data section.

    Returns:
        pseudonymize_manifest(manifest, key) when ``data.pseudonymize_patient_ids``, else `manifest`.

    Raises:
        ConfigError: The option is on and the key is missing or too short.
    """
    if not data.pseudonymize_patient_ids:
        return manifest
    return pseudonymize_manifest(manifest, pseudonymization_key())
