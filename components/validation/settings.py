"""The settings of both validations: the run config's `validation` section.

``ValidationConfig`` is declared here, beside the checks it configures, and
components.config uses it as ``RunConfig.validation``: the validation package
never imports the run-config module, so there is no import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.imaging import SUPPORTED_MODES
from components.validation.severities import Severity, resolve_severities

# Every mode the decoder converts correctly (a file in any other mode is an excluded row at ingest,
# EXCLUDE_UNSUPPORTED_MODE); narrow the list to make other modes block a drop.
DEFAULT_MODES: tuple[str, ...] = SUPPORTED_MODES
# Bits per channel the decoder handles: PNG depths 1, 2, 4, 8 and 16, and 32 (PIL modes I and F);
# DICOM files record their BitsStored, 10 to 15 in radiographs (windowed to 8 bits by components.dicom).
DEFAULT_BIT_DEPTHS: tuple[int, ...] = (1, 2, 4, 8, 10, 11, 12, 13, 14, 15, 16, 32)


class ValidationConfig(BaseModel):
    """Settings of both validations (manifest and split); unknown keys are errors."""

    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid")

    min_width: int = Field(64, ge=1)  # px
    min_height: int = Field(64, ge=1)  # px
    allowed_modes: list[str] = list(DEFAULT_MODES)  # PIL modes
    allowed_bit_depths: list[int] = list(DEFAULT_BIT_DEPTHS)  # bits per channel
    # enough_gray_levels: distinct values of the 8-bit grayscale the models see (manifest
    # column gray_levels). A radiograph windowed well uses most of the 256; a 12-bit image
    # min-max rescaled under a burned-in label at 65535 used about 13.
    min_gray_levels: int = Field(32, ge=1, le=256)
    min_images_per_class: int = Field(5, ge=1)
    # class_balance: each task label holds at least this fraction of the used images.
    min_class_fraction: float = Field(0.1, ge=0, le=1)
    # age_group_consistency: largest allowed gap between two classes' pediatric shares.
    max_age_group_gap: float = Field(0.5, ge=0, le=1)
    # pHash bits; 4 chosen on real radiographs (bench/results/validation.md). Above ~8
    # unrelated radiographs match and the search slows down quadratically.
    near_duplicate_max_distance: int = Field(4, ge=0, le=16)
    frontal_only: bool = True
    # views_known: the largest share of used images whose view is blank or "unknown" (metadata
    # without a view; a folder source without default_view). frontal_views_only cannot see a
    # lateral among them. 1.0 turns the check off.
    max_unknown_view_fraction: float = Field(0.5, ge=0, le=1)
    min_images_per_split_class: int = Field(1, ge=0)
    # Per-check override of the default severity: {check_name: "blocking" | "warning"}.
    severity: dict[str, Severity] = {}
    warning_only: list[str] = []  # shorthand for severity: warning

    @model_validator(mode="after")
    def _known_checks(self) -> ValidationConfig:
        resolve_severities(self.severity, self.warning_only)  # raises listing the valid check names
        return self

    def severities(self) -> dict[str, Severity]:
        """The severity of every check under this config.

        Returns:
            {check name: "blocking" | "warning"} for every known check.
        """
        return resolve_severities(self.severity, self.warning_only)
