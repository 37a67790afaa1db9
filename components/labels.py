"""Task label sets and the default finding -> label maps.

A *finding* is what a dataset says about an image (e.g. ``COVID-19, ARDS``,
``Pneumonia/Bacterial/Streptococcus``, ``todo``). A *label* is one class of
the task being trained. Maps are data: run configs may override them.
"""

from __future__ import annotations

COVID = "COVID-19"
NORMAL = "normal"
PNEUMONIA = "pneumonia"
NON_COVID = "non-COVID"

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
EXCLUDE_UNREADABLE = "unreadable image"
EXCLUDE_MISSING_FILE = "missing file"
EXCLUDE_LATERAL = "lateral view"
EXCLUDE_NOT_XRAY = "not an X-ray"

# Findings that are not diagnoses: excluded with EXCLUDE_UNLABELLED.
UNLABELLED_FINDINGS = frozenset({"", "todo", "inconclusive", "unknown", "nan"})

# Default 3-class map (lower-cased finding -> multiclass label). ieee8023 writes
# hierarchical findings such as "Pneumonia/Viral/COVID-19"; we match on the
# most specific known term, see `finding_to_label`.
DEFAULT_MULTICLASS_MAP: dict[str, str | None] = {
    "covid-19": COVID,
    "covid-19, ards": COVID,
    "pneumonia/viral/covid-19": COVID,
    "no finding": NORMAL,
    "normal": NORMAL,
    "pneumonia": PNEUMONIA,
    "bacterial": PNEUMONIA,
    "viral": PNEUMONIA,
    "fungal": PNEUMONIA,
    "sars": PNEUMONIA,
    "mers": PNEUMONIA,
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
    # ARDS alone is neither COVID-19, normal nor pneumonia.
    "ards": None,
}


def multiclass_to_binary(label: str) -> str:
    """The binary task is COVID-19 vs everything else."""
    return COVID if label == COVID else NON_COVID


def labels_for_task(task: str) -> tuple[str, ...]:
    try:
        return TASK_LABELS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASK_LABELS)}") from None
