"""Manifest: one row per image found in a source, included or excluded with a reason.

(Owned by the ingest work; see MANIFEST_COLUMNS for the contract other code relies on.)
"""

# Column order of every manifest DataFrame. `exclusion_reason` is "" for rows
# that are used; excluded rows stay in the manifest with their reason.
MANIFEST_COLUMNS = [
    "path",         # absolute path of the image file
    "sha256",       # hex digest of the file bytes ("" when unreadable/missing)
    "width",        # pixels (0 when unreadable)
    "height",
    "mode",         # PIL mode: L, RGB, RGBA, P, I;16, ...
    "label",        # task label (components.labels.TASK_LABELS[task]) or "" when excluded
    "finding",      # the source's own finding text, untouched
    "patient_id",   # grouping key for splits, prefixed by source to stay unique across sources
    "source",       # source name from the run config
    "view",         # PA, AP, AP Supine, L, unknown, ...
    "exclusion_reason",
]
