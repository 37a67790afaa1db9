"""The one statement of what models trained here may be used for.

Shown on every evaluation and reproduction card, in the registered model's
description, in the ZenML Model Control Plane and in each served model's contract.
"""

INTENDED_USE = (
    "Research use only. This model is not a medical device: it is not cleared or approved for clinical use "
    "and must not be used for diagnosis, triage or any decision about a patient."
)
