"""Task label sets, exclusion reasons and the finding -> label maps.

A *finding* is what a dataset says about an image (e.g. ``COVID-19, ARDS``,
``Pneumonia/Bacterial/Streptococcus``, ``todo``). A *label* is one class of
the task being trained. Maps are data: run configs may override them.

How a finding becomes a label (``finding_to_label``):

1. The finding is normalised: stripped, inner whitespace collapsed, lower-cased.
2. Findings that are not diagnoses (``UNLABELLED_FINDINGS``) are excluded with
   EXCLUDE_UNLABELLED; overrides cannot change this.
3. An exact key of the task's map wins.
4. Otherwise a hierarchical finding (``Pneumonia/Viral/SARS``) takes the value
   of its most specific part that the map knows (``sars``, else ``viral``,
   else ``pneumonia``).
5. Otherwise a combined finding (``A, B``) is COVID-19 if any part is
   COVID-19 (a COVID-positive case with a second finding is still COVID-19);
   any other combination must be listed in the map as a whole.
6. A finding the map does not know is EXCLUDE_UNKNOWN_FINDING; one mapped to
   None is EXCLUDE_OUT_OF_TASK.

The default 3-class map covers the findings and class-folder names of the
supported public datasets (components.sources): COVID-19 (``COVID-19``,
``COVID``, ``COVID-19, ARDS``, ``Pneumonia/Viral/SARS-CoV-2``); normal (``No
Finding``, ``Normal``); pneumonia (bacterial, viral, fungal and aspiration
pneumonias and the named organisms, ``Viral Pneumonia``, the Kaggle pediatric
set's ``pneumonia/bacterial`` / ``pneumonia/viral``); and real diagnoses
outside the three classes (ARDS, tuberculosis, ``Lung_Opacity``), mapped to
None: excluded from the 3-class task, non-COVID in the binary task, which is
COVID-19 vs any other real diagnosis. Findings that mean something only in one
dataset (COVIDx's ``positive`` / ``negative``) are in LAYOUT_LABEL_MAPS and
used by that layout's adapter only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

COVID = "COVID-19"
NORMAL = "normal"
PNEUMONIA = "pneumonia"
NON_COVID = "non-COVID"

# The two tasks of the paper: COVID-19 vs non-COVID, and COVID-19 / normal / pneumonia.
Task = Literal["binary", "multiclass"]

TASK_LABELS: dict[str, tuple[str, ...]] = {
    # Index order is the model's output order. For the binary task the sigmoid
    # output is P(label index 1) = P(COVID-19).
    "binary": (NON_COVID, COVID),
    "multiclass": (COVID, NORMAL, PNEUMONIA),
}

# Exclusion reasons, shared by every source adapter.
EXCLUDE_UNLABELLED = "unlabelled finding"
EXCLUDE_UNKNOWN_FINDING = "unknown finding"
EXCLUDE_OUT_OF_TASK = "finding outside the task"
EXCLUDE_UNREADABLE = "unreadable image"  # any other decode failure; the detail column says which
EXCLUDE_EMPTY_FILE = "empty file"
EXCLUDE_TRUNCATED = "truncated image"
EXCLUDE_NOT_DECODABLE = "not an image (content)"  # e.g. a text file named .png
EXCLUDE_TOO_LARGE = "image too large"  # declared pixels above the decompression-bomb limit
EXCLUDE_UNSUPPORTED_MODE = "unsupported pixel format"  # decodes, but its PIL mode has no grayscale conversion
EXCLUDE_MISSING_FILE = "missing file"
EXCLUDE_LATERAL = "lateral view"
EXCLUDE_NOT_XRAY = "not an X-ray"
EXCLUDE_NOT_IMAGE = "not a PNG/JPEG file"
# DICOM sources (components.dicom, components.dicom_sources): the detail says what was found.
EXCLUDE_NOT_DICOM = "not a DICOM file"  # a file of a dicom source without DICM at byte 128
EXCLUDE_DICOM_NOT_IMAGE = "not an image (DICOM object)"  # structured report, presentation state... (SOP Class)
EXCLUDE_NO_PIXEL_DATA = "DICOM without pixel data"
EXCLUDE_MULTI_FRAME = "multi-frame DICOM"
EXCLUDE_NOT_NORMAL = "not normal, no lung opacity"  # RSNA Pneumonia's third class: neither normal nor pneumonia
EXCLUDE_DUPLICATE = "duplicate image"

# Reasons that mean the file itself is unusable (as opposed to its metadata).
FILE_PROBLEM_REASONS: tuple[str, ...] = (
    EXCLUDE_MISSING_FILE,
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_UNSUPPORTED_MODE,
    EXCLUDE_UNREADABLE,
)
EXCLUDE_DUPLICATE_ROW = "duplicate manifest row"
EXCLUDE_OUTSIDE_ROOT = "path outside the source root"
EXCLUDE_NAME_NOT_UTF8 = "file name not UTF-8"  # bytes an archive made elsewhere left; detail shows them as \xNN

# Findings that are not diagnoses: excluded with EXCLUDE_UNLABELLED.
UNLABELLED_FINDINGS = frozenset({"", "todo", "inconclusive", "unknown", "nan", "?", "n/a"})

# Default 3-class map (normalised finding -> multiclass label, None = a real
# diagnosis outside the three classes). Keys are single terms (matched as the
# parts of hierarchical findings) or whole findings seen in public datasets.
DEFAULT_MULTICLASS_MAP: dict[str, str | None] = {
    "covid-19": COVID,
    "covid19": COVID,
    "covid": COVID,  # folder name in the COVID-19 Radiography Database
    "sars-cov-2": COVID,  # must not fall back to "viral" in Pneumonia/Viral/SARS-CoV-2
    "covid-19, ards": COVID,
    "pneumonia/viral/covid-19": COVID,
    "no finding": NORMAL,
    "normal": NORMAL,
    "pneumonia": PNEUMONIA,
    "bacterial": PNEUMONIA,
    "viral": PNEUMONIA,
    "fungal": PNEUMONIA,
    "aspiration": PNEUMONIA,
    "bacterial pneumonia": PNEUMONIA,
    "viral pneumonia": PNEUMONIA,
    "mycoplasma bacterial pneumonia": PNEUMONIA,  # ieee8023, June 2020
    "sars": PNEUMONIA,
    "mers": PNEUMONIA,
    "mers-cov": PNEUMONIA,
    "pneumocystis": PNEUMONIA,
    "streptococcus": PNEUMONIA,
    "klebsiella": PNEUMONIA,
    "mycoplasma": PNEUMONIA,
    "legionella": PNEUMONIA,
    "lipoid": PNEUMONIA,
    "varicella": PNEUMONIA,
    "e.coli": PNEUMONIA,
    "influenza": PNEUMONIA,
    "chlamydophila": PNEUMONIA,
    "staphylococcus": PNEUMONIA,
    "aspergillosis": PNEUMONIA,
    "herpes": PNEUMONIA,
    "nocardia": PNEUMONIA,
    "fungal pneumonia": PNEUMONIA,
    # Real diagnoses that are neither COVID-19, normal nor pneumonia.
    "ards": None,
    "tuberculosis": None,
    "lung_opacity": None,  # COVID-19 Radiography Database class folder (non-COVID lung opacities)
    "lung opacity": None,
}

# The binary task is COVID-19 vs any other real diagnosis, so findings outside
# the 3-class task (ARDS alone) are non-COVID here rather than excluded.
DEFAULT_BINARY_MAP: dict[str, str | None] = {
    finding: (COVID if label == COVID else NON_COVID) for finding, label in DEFAULT_MULTICLASS_MAP.items()
}

DEFAULT_LABEL_MAPS: dict[str, dict[str, str | None]] = {
    "binary": DEFAULT_BINARY_MAP,
    "multiclass": DEFAULT_MULTICLASS_MAP,
}

# Findings whose meaning depends on the dataset: only the adapter of that
# layout adds them to the task's map (below any `label_map` override of the
# source). COVIDx CXR-3/4 label files say `positive` / `negative` (COVID-19
# positive or negative): negative is a non-COVID image in the binary task,
# but it says nothing about normal vs pneumonia, so it is outside the
# 3-class task unless a source's label_map maps it. A folder named
# "positive" in another dataset says nothing about COVID-19, hence not global.
LAYOUT_MULTICLASS_MAPS: dict[str, dict[str, str | None]] = {
    "covidx": {"positive": COVID, "negative": None},
    # RSNA Pneumonia Detection Challenge: "Lung Opacity" is its pneumonia class (elsewhere a non-COVID
    # opacity outside the 3-class task); "No Lung Opacity / Not Normal" is excluded by its adapter.
    "rsna_pneumonia": {"lung opacity": PNEUMONIA},
}
LAYOUT_LABEL_MAPS: dict[str, dict[str, dict[str, str | None]]] = {
    layout: {
        "multiclass": dict(mapping),
        "binary": {finding: (COVID if label == COVID else NON_COVID) for finding, label in mapping.items()},
    }
    for layout, mapping in LAYOUT_MULTICLASS_MAPS.items()
}


def labels_for_task(task: str) -> tuple[str, ...]:
    """The class names of a task, in the model's output order.

    Args:
        task: "binary" or "multiclass".

    Returns:
        TASK_LABELS[task].

    Raises:
        ValueError: an unknown task, naming the valid ones.
    """
    try:
        return TASK_LABELS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASK_LABELS)}") from None


def normalize_finding(finding: object) -> str:
    """Normalise a metadata finding for lookup in a label map.

    Args:
        finding: a finding as read from metadata (str, None, NaN, or anything printable).

    Returns:
        The text stripped, whitespace-collapsed and lower-cased; "" for None and NaN.
    """
    if finding is None or (isinstance(finding, float) and finding != finding):
        return ""
    return " ".join(str(finding).split()).lower()


def label_map_for_task(task: str, overrides: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """The task's default finding-to-label map with a source's overrides applied.

    Args:
        task: "binary" or "multiclass".
        overrides: {finding: label or None}; keys are findings (normalised like
            normalize_finding), values labels of the task (matched case-insensitively,
            returned in canonical spelling) or None (exclude the finding from the task).

    Returns:
        {normalised finding: label or None}.

    Raises:
        ValueError: an unknown task, two keys that normalise to the same finding, or a value
            that is not a label of the task (so that a typo cannot create a new class).
    """
    labels = labels_for_task(task)
    mapping = dict(DEFAULT_LABEL_MAPS[task])
    canonical = {label.lower(): label for label in labels}
    seen: dict[str, str] = {}
    for raw_key, value in (overrides or {}).items():
        key = normalize_finding(raw_key)
        if key in seen:
            raise ValueError(f"label_map keys {seen[key]!r} and {raw_key!r} are the same finding")
        seen[key] = raw_key
        if value is None:
            mapping[key] = None
        elif isinstance(value, str) and value.lower() in canonical:
            mapping[key] = canonical[value.lower()]
        else:
            raise ValueError(f"label_map[{raw_key!r}] = {value!r} is not a {task} label; valid: {list(labels)} or null")
    return mapping


def finding_to_label(finding: str, task: str, label_map: Mapping[str, str | None] | None = None) -> tuple[str, str]:
    """Map one finding to a label of the task, or say why it has none.

    Args:
        finding: the finding as read from metadata.
        task: "binary" or "multiclass".
        label_map: overrides of the task's default map (see label_map_for_task and the module docstring).

    Returns:
        (label, exclusion_reason): exactly one of them is non-empty; the reason is
        EXCLUDE_UNLABELLED, EXCLUDE_UNKNOWN_FINDING or EXCLUDE_OUT_OF_TASK.

    Raises:
        ValueError: an unknown task or an invalid override (see label_map_for_task).
    """
    return resolve_label(finding, label_map_for_task(task, label_map))


def resolve_label(finding: str, mapping: Mapping[str, str | None]) -> tuple[str, str]:
    """finding_to_label with a ready map, for loops over rows.

    A finding not in the map is looked up by its comma-separated parts (any COVID-19 part
    makes it COVID-19), then by the most specific part of a "/" hierarchy.

    Args:
        finding: the finding as read from metadata.
        mapping: a map from label_map_for_task.

    Returns:
        (label, exclusion_reason), as finding_to_label.
    """
    key = normalize_finding(finding)
    if key in UNLABELLED_FINDINGS:
        return "", EXCLUDE_UNLABELLED
    known, label = _lookup(key, mapping)
    if not known:
        return "", EXCLUDE_UNKNOWN_FINDING
    if label is None:
        return "", EXCLUDE_OUT_OF_TASK
    return label, ""


def _lookup(key: str, mapping: Mapping[str, str | None]) -> tuple[bool, str | None]:
    """(known, label): exact key, else combined parts, else most specific hierarchy part."""
    if key in mapping:
        return True, mapping[key]
    if "," in key:
        parts = [_lookup_hierarchical(part.strip(), mapping) for part in key.split(",")]
        if any(known and label == COVID for known, label in parts):
            return True, COVID
        return False, None
    return _lookup_hierarchical(key, mapping)


def _lookup_hierarchical(key: str, mapping: Mapping[str, str | None]) -> tuple[bool, str | None]:
    if key in mapping:
        return True, mapping[key]
    for part in reversed([part.strip() for part in key.split("/")]):
        if part in mapping:
            return True, mapping[part]
    return False, None
