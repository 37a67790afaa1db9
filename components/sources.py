"""Source adapters and their registry: one adapter per dataset layout, each returning manifest candidates.

A layout is one adapter plus one pydantic options model, registered together
under its `kind` (in the manner of timm's ``@register_model``)::

    class TinyOptions(SourceOptions):
        '''What the run config may set for a ``tiny`` source.'''

        kind: Literal["tiny"] = "tiny"
        suffix: str = Field(".png", description="image file suffix")

    @register_source("tiny", options=TinyOptions)
    def tiny_candidates(root: str, task: str, options: TinyOptions) -> list[dict[str, Any]]:
        '''Candidates of a tiny layout (first line: its summary in `cxr sources`).'''

Nothing else changes: the run config's ``data.sources`` entries are validated
by the model registered for their `kind` (``SourceConfig``, used by
components.config.DataConfig), ``build_manifest`` (components.manifest) runs
the registered adapter, and ``cxr sources`` lists every kind with its options,
their types, defaults and descriptions. Every options model derives from
``SourceOptions`` (kind, root, name, label_map) and forbids unknown keys.

An adapter is ``adapter(root, task, options) -> list[candidate]`` (see
components.candidates.candidate). `root` is the source's root made absolute
(a local path) or an ``s3://`` URI; adapters list and read only through
components.storage and name files relative to `root`. ``options.label_map``
overrides the task's finding -> label map (components.labels). Nothing found
is dropped silently: a file or metadata row the adapter cannot use becomes an
excluded row with its reason, and a layout that cannot be parsed at all is an
error naming the file.

Patient ids are the grouping key of the patient-level splits. build_manifest
prefixes them with the source name, so ids of two sources never merge; the
same person appearing in two public datasets cannot be detected from ids.

- ``folder``: ``root/<finding>/<file>``, one subfolder per class
  (``COVID-19``, ``normal``, ``NORMAL``, ``PNEUMONIA``...). Files directly in
  ``root`` (README, metadata.csv) and hidden files/folders (``.DS_Store``,
  AppleDouble ``._x.png``) are ignored. Other files inside a class folder are
  listed as excluded (not a PNG/JPEG) rather than dropped, so that a folder
  of DICOM or TIFF files shows up in the exclusion summary instead of
  silently yielding an empty dataset. Options: ``patient_id_pattern`` (regex
  with a ``patient_id`` group searched in the file stem; default: the text
  before the first ``_``, else the whole stem), ``default_view``.
- ``images``: every file below ``root`` at any depth, without labels (a drop of
  new images for ``cxr predict-batch``); every row is ``unlabelled finding``
  for training and evaluation. Options: ``patient_id_pattern``, ``default_view``
  (as ``folder``).
- ``ieee8023``: the covid-chestxray-dataset layout, ``metadata.csv`` plus the
  image folder named in its ``folder`` column (``images``). CT rows are
  excluded (not an X-ray), lateral views excluded.
- ``actualmed`` / ``figure1``: agchung's Actualmed and Figure1 COVID-19 chest
  X-ray datasets: ``metadata.csv`` (columns ``patientid``, ``finding``,
  ``view``, ``modality``; optional ``imagename``, ``age``, ``notes``) and
  ``images/``. The image is ``images/<imagename>`` when that column is filled
  (Actualmed), else every PNG/JPEG in ``images/`` named after the patient id
  (Figure1: ``images/COVID-00003a.jpg`` or ``.png``); a row with no such file
  is excluded as a missing file. A blank finding (``Inconclusive`` in the
  notes) is excluded as unlabelled, the notes kept in exclusion_detail.
  Both datasets hold X-rays only: a blank modality counts as X-ray, another
  modality (CT) is excluded. Figure1 names several images of one case
  ``COVID-00003a``, ``COVID-00003b``: they are grouped as patient
  ``COVID-00003`` (grouping too much is safe; too little leaks). Figure1's
  metadata.csv is not UTF-8: metadata is read as Windows-1252 when it is not.
- ``kaggle_pneumonia``: the Kaggle "Chest X-Ray Images (Pneumonia)" set
  (Kermany et al.): ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``.
  `root` may be the ``chest_xray`` folder or its parent; the download's
  nested copy ``chest_xray/chest_xray/`` and ``__MACOSX/`` are ignored, as is
  anything outside ``<split>/<class>/``. Findings: ``normal``,
  ``pneumonia/bacterial`` (``person1_bacteria_1.jpeg``), ``pneumonia/viral``
  (``person1_virus_6.jpeg``), else ``pneumonia``. Patient ids:
  ``person1_bacteria_1`` -> ``person1``; NORMAL ``IM-0115-0001`` ->
  ``IM-0115``, ``NORMAL2-IM-1427-0001`` -> ``NORMAL2-IM-1427``. Every row is
  ``pediatric`` (children aged 1-5). The dataset's own train/val/test folders
  are NOT used as the split (its val has 16 images, and the patient-level
  split is ours); the folder is only where the file lives. Option:
  ``default_view``.
- ``covid_radiography``: the COVID-19 Radiography Database (Kaggle,
  Chowdhury/Rahman et al.): ``COVID/images/*.png``, ``Normal/images``,
  ``Viral Pneumonia/images``, ``Lung_Opacity/images`` (versions 4-5), or the
  older layout with files directly in the class folder (``COVID-19``,
  ``NORMAL``...). ``masks/`` folders, files at the top (``*.metadata.xlsx``,
  README) and spreadsheets/text files inside class folders are ignored.
  ``Lung_Opacity`` is a non-COVID diagnosis: outside the 3-class task,
  non-COVID in the binary task. `root` may also be the download folder
  holding one ``COVID-19_Radiography_Dataset`` (any single folder whose name
  contains "radiography"). LEAKAGE CAVEAT: the database has no patient ids,
  so each image is its own patient; several images of one person can land in
  train and test. It also re-publishes images of other public sets
  (ieee8023, Kaggle pediatric pneumonia, ...), resized and re-encoded, which
  the byte-level duplicate check does not catch: combine it with those
  sources only knowingly. Option: ``default_view``.
- ``covidx``: COVIDx CXR split files, one image per line
  ``patientId filename label source`` (whitespace-separated; ``source``
  optional; a file name with spaces is the tokens between the id and the
  label). Labels ``COVID-19`` / ``normal`` / ``pneumonia``, or COVIDx CXR-3/4's
  ``positive`` / ``negative`` (negative: non-COVID in the binary task,
  outside the 3-class task unless label_map maps it). Options
  ``split_files`` (file names relative to root; default: whichever of
  ``train.txt``, ``val.txt``, ``test.txt`` exist) and ``image_folders``
  ({split file: image folder}; default: ``train``, ``val`` or ``test``
  after the split file name's start, so ``train_COVIDx9A.txt`` -> ``train/``).
  The split files' own train/test division is not used as the split. Blank
  lines and ``#`` comments are skipped; any other line that is not at least
  ``patientId filename label`` is an error naming ``file:line``. COVIDx
  re-publishes other public sets: see the leakage caveat above.
- ``manifest``: a generic CSV or Parquet manifest, option ``manifest_file``
  (relative to root, default ``manifest.csv``; ``.parquet``/``.pq`` read as
  Parquet). Columns: ``path`` (or ``uri``), ``label`` (or ``finding``: a
  finding, mapped like any other), optional ``patient_id`` (default: the file
  stem, each image its own patient), ``view`` (blank: ``default_view``),
  ``age_group`` (``adult``/``pediatric``/blank) or ``age`` (years), ``sex``
  (``M``/``F``/``male``/``female``; anything else unknown). Paths
  are relative to root; an absolute path or URI is accepted only inside root,
  and anything escaping it (``../../etc/passwd``, ``/etc/passwd``, a symlink
  pointing out) is excluded as "path outside the source root", never opened.
"""

from __future__ import annotations

import io
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, reduce
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, PydanticUndefined, core_schema

from components.candidates import (
    ADULT,
    PEDIATRIC,
    UNKNOWN_VIEW,
    SourceError,
    age_group_from_age,
    candidate,
    is_image_name,
    read_metadata_csv,
    read_metadata_text,
)
from components.labels import (
    EXCLUDE_NOT_XRAY,
    EXCLUDE_OUTSIDE_ROOT,
    LAYOUT_LABEL_MAPS,
    label_map_for_task,
    normalize_finding,
)
from components.storage import MissingFileError, OutsideRootError, child_uri, is_s3_uri, list_files, read_bytes

__all__ = [
    "ActualmedOptions",
    "CovidRadiographyOptions",
    "CovidxOptions",
    "Figure1Options",
    "FolderOptions",
    "Ieee8023Options",
    "ImagesOptions",
    "KagglePneumoniaOptions",
    "ManifestOptions",
    "OptionInfo",
    "SourceConfig",
    "SourceKind",
    "SourceOptions",
    "describe_sources",
    "get_source_kind",
    "option_infos",
    "parse_source",
    "parse_sources",
    "register_source",
    "source_kinds",
    "unregister_source",
]

# ---------------------------------------------------------------- the registry


class SourceOptions(BaseModel):
    """What every source of the run config has; each kind's options model adds its own options.

    A kind's model derives from this one and pins ``kind`` to a ``Literal`` of its
    name; unknown keys are refused (a typo, or another kind's option).
    """

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="the dataset layout: one of the kinds `cxr sources` lists")
    root: str = Field(
        min_length=1,
        description="the dataset folder: a local path (relative to the working directory) or s3://bucket/prefix",
    )
    name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the source's name in this run, unique; prefixes its patient ids and names it in reports",
    )
    label_map: dict[str, str | None] | None = Field(
        None,
        description="overrides of the task's finding -> label map: {finding: label, or null to exclude it}",
    )

    @model_serializer(mode="wrap")
    def _always_with_kind(self, handler: SerializerFunctionWrapHandler):  # no return type: keeps the JSON schema
        # `kind` says which model reads the dump back: keep it even when its default is excluded.
        dumped = handler(self)
        return {"kind": self.kind, **dumped} if isinstance(dumped, dict) else dumped


# adapter(root, task, options) -> candidates (components.candidates.candidate)
Adapter = Callable[[str, str, Any], list[dict[str, Any]]]
AdapterT = TypeVar("AdapterT", bound=Adapter)


@dataclass(frozen=True)
class OptionInfo:
    """One option of a source kind, as `cxr sources` shows it."""

    name: str
    type: str
    default: str  # "required" when there is none
    description: str


@dataclass(frozen=True)
class SourceKind:
    """A registered layout: its kind, its adapter and its options model."""

    kind: str
    adapter: Adapter
    options: type[SourceOptions]

    @property
    def summary(self) -> str:
        """The first line of the adapter's docstring (else of the options model's)."""
        for documented in (self.adapter, self.options):
            lines = (documented.__doc__ or "").strip().splitlines()
            if lines:
                return lines[0].strip()
        return ""

    def own_options(self) -> list[OptionInfo]:
        """The options this kind adds to those of every source (SourceOptions), in declaration order."""
        return [info for info in option_infos(self.options) if info.name not in SourceOptions.model_fields]


_SOURCES: dict[str, SourceKind] = {}


def _pinned_kind(options: type[SourceOptions]) -> tuple[Any, ...]:
    annotation = options.model_fields["kind"].annotation
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def register_source(kind: str, *, options: type[SourceOptions]) -> Callable[[AdapterT], AdapterT]:
    """Register the decorated function as the adapter of `kind`, with its options model.

    Args:
        kind: The layout's name in the run config (``data.sources[].kind``).
        options: The kind's pydantic options model: a SourceOptions subclass whose
            ``kind`` field is ``Literal[kind]``.

    Returns:
        A decorator that registers ``adapter(root, task, options) -> list[candidate]``
        and returns it unchanged.

    Raises:
        TypeError: `options` is not a SourceOptions subclass pinned to `kind`.
        ValueError: `kind` is already registered.
    """
    if not (isinstance(options, type) and issubclass(options, SourceOptions)):
        raise TypeError(f"source kind {kind!r}: options must be a SourceOptions subclass, got {options!r}")
    if _pinned_kind(options) != (kind,):
        raise TypeError(f'source kind {kind!r}: {options.__name__} must declare kind: Literal["{kind}"] = "{kind}"')

    def decorator(adapter: AdapterT) -> AdapterT:
        if kind in _SOURCES:
            raise ValueError(f"source kind {kind!r} is already registered ({_SOURCES[kind].adapter.__qualname__})")
        _SOURCES[kind] = SourceKind(kind, adapter, options)
        return adapter

    return decorator


def unregister_source(kind: str) -> SourceKind:
    """Remove a registered kind (tests that register one of their own).

    Args:
        kind: A registered kind.

    Returns:
        Its registry entry.

    Raises:
        SourceError: `kind` is not registered.
    """
    entry = get_source_kind(kind)
    del _SOURCES[kind]
    return entry


def source_kinds() -> Mapping[str, SourceKind]:
    """The registered kinds, by name.

    Returns:
        A read-only {kind: SourceKind}, sorted by kind.
    """
    return MappingProxyType(dict(sorted(_SOURCES.items())))


def _valid_kinds() -> str:
    return f"valid kinds: {sorted(_SOURCES)}"


def get_source_kind(kind: object) -> SourceKind:
    """The registry entry of one kind.

    Args:
        kind: A kind name.

    Returns:
        Its SourceKind (adapter and options model).

    Raises:
        SourceError: `kind` is not registered (the message lists the valid kinds).
    """
    entry = _SOURCES.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise SourceError(f"unknown source kind {kind!r}; {_valid_kinds()}")
    return entry


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default_text(default: Any) -> str:
    if default is PydanticUndefined:
        return "required"
    if default is None:
        return "null"
    return repr(default)


def option_infos(options: type[BaseModel]) -> list[OptionInfo]:
    """Every field of an options model: name, type, default and description.

    Args:
        options: A pydantic model class (a SourceOptions subclass).

    Returns:
        One OptionInfo per field, in declaration order (inherited fields first).
    """
    return [
        OptionInfo(name, _type_name(field.annotation), _default_text(field.default), field.description or "")
        for name, field in options.model_fields.items()
    ]


# ---------------------------------------------------------------- validation dispatched on the registry


def _error(loc: tuple[str | int, ...], error_type: str, message: str, value: Any) -> ValidationError:
    # Braces would be read as placeholders of the message template.
    template = message.replace("{", "(").replace("}", ")")
    return ValidationError.from_exception_data(
        "SourceConfig", [{"type": PydanticCustomError(error_type, template), "loc": loc, "input": value}]
    )


def _explained(error: ValidationError, entry: SourceKind) -> ValidationError:
    """The options model's errors, an unknown key explained: another kind's option, or a typo."""
    valid = sorted(set(entry.options.model_fields) - {"kind", "root", "name"})
    line_errors: list[Any] = []
    for item in error.errors():
        loc = item["loc"]
        if item["type"] == "extra_forbidden" and len(loc) == 1:
            option = str(loc[0])
            owners = sorted(kind for kind, other in _SOURCES.items() if option in other.options.model_fields)
            if owners:
                message = f"option {option!r} does not apply to kind {entry.kind!r} (an option of {', '.join(owners)})"
            else:
                message = f"unknown option {option!r}; valid: {valid}"
            template = message.replace("{", "(").replace("}", ")")
            line_errors.append(
                {"type": PydanticCustomError("source_option", template), "loc": loc, "input": item["input"]}
            )
        else:
            detail = {"type": item["type"], "loc": loc, "input": item["input"]}
            if "ctx" in item:
                detail["ctx"] = item["ctx"]
            line_errors.append(detail)
    return ValidationError.from_exception_data(error.title, line_errors)


def _validate_source(value: Any) -> SourceOptions:
    """One source (a mapping, or an options model instance) validated by its kind's registered model."""
    if isinstance(value, SourceOptions):
        entry = _SOURCES.get(value.kind)
        if entry is None:
            raise _error(("kind",), "source_kind", f"unknown source kind {value.kind!r}; {_valid_kinds()}", value.kind)
        if not isinstance(value, entry.options):
            raise _error((), "source_type", f"a {entry.kind!r} source must be a {entry.options.__name__}", value)
        return value
    if not isinstance(value, Mapping):
        raise _error((), "source_type", "a source is a mapping: kind, root, name and the kind's options", value)
    if "kind" not in value:
        raise _error(("kind",), "missing", f"every source needs a kind; {_valid_kinds()}", value)
    kind = value["kind"]
    entry = _SOURCES.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise _error(("kind",), "source_kind", f"unknown source kind {kind!r}; {_valid_kinds()}", kind)
    try:
        return entry.options.model_validate(value)
    except ValidationError as error:
        raise _explained(error, entry) from None


class _RegisteredKind:
    """Pydantic marker: validate with the options model registered for the value's `kind`.

    Validation looks the kind up in the registry each time, so a kind registered
    after this type was used in a model (components.config.DataConfig) is accepted
    at once. The JSON schema is the discriminated union (on ``kind``) of the models
    registered when the schema was built; a value serialises as its own model.
    """

    def __get_pydantic_core_schema__(self, source_type: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        models = tuple(entry.options for entry in source_kinds().values())
        if len(models) > 1:
            union: Any = Annotated[reduce(operator.or_, models), Field(discriminator="kind")]
        else:
            union = models[0] if models else source_type
        return core_schema.no_info_plain_validator_function(
            _validate_source,
            json_schema_input_schema=handler.generate_schema(union),
            serialization=core_schema.simple_ser_schema("any"),  # each value as its own model (SerializeAsAny)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # What is read and what is written are the same union (a plain validator has no schema of its own).
        return handler(schema["json_schema_input_schema"])  # type: ignore[typeddict-item]


SourceConfig = Annotated[SourceOptions, _RegisteredKind()]
"""One ``data.sources`` entry: validated by the options model registered for its ``kind``."""


@cache
def _source_list() -> TypeAdapter[list[SourceOptions]]:
    # Built on first use (after the kinds below registered): only its JSON schema depends on when.
    return TypeAdapter(list[SourceConfig])


def parse_source(data: Mapping[str, Any] | SourceOptions) -> SourceOptions:
    """One source config validated by its kind's registered options model.

    Args:
        data: ``{"kind": ..., "root": ..., "name": ..., <options>}`` or an options model.

    Returns:
        An instance of the kind's options model.

    Raises:
        pydantic.ValidationError: Unknown kind (the valid kinds listed), another kind's
            option or an unknown one (named), or an invalid value.
    """
    return parse_sources([data])[0]


def parse_sources(data: Sequence[Mapping[str, Any] | SourceOptions]) -> list[SourceOptions]:
    """Source configs validated by their kinds' registered options models.

    Args:
        data: Mappings (as in a run config's ``data.sources``) or options models.

    Returns:
        One options model instance per item, in order.

    Raises:
        pydantic.ValidationError: As for `parse_source`; locations start with the item's index.
    """
    return _source_list().validate_python(list(data))


DefaultView = Annotated[
    str, Field(description="the view of images whose metadata gives none (PA, AP...; lateral views are excluded)")
]


# ---------------------------------------------------------------- shared helpers


def _task_map(
    task: str, label_map: Mapping[str, str | None] | None, layout: str | None = None
) -> dict[str, str | None]:
    """The task's map for one source: defaults, then the layout's own findings, then the source's overrides."""
    mapping = label_map_for_task(task, label_map)
    overridden = {normalize_finding(key) for key in (label_map or {})}
    for finding, label in LAYOUT_LABEL_MAPS.get(layout or "", {}).get(task, {}).items():
        if finding not in overridden:
            mapping[finding] = label
    return mapping


def _clean_view(view: str) -> str:
    view = " ".join(str(view).split())
    return UNKNOWN_VIEW if view in ("", "?") else view


def _is_xray(modality: str) -> bool:
    # "X-ray", "X-Ray", "xray"; a blank modality cannot be confirmed as an X-ray.
    return re.sub(r"[\s_-]", "", modality).lower() == "xray"


def _missing_file(found: dict[str, Any], root: str, relative: str, detail: str) -> dict[str, Any]:
    """A candidate built with no file name, given the expected location (for the report) and why."""
    try:
        found["uri"] = child_uri(root, relative)
    except OutsideRootError:
        pass  # keep "" rather than a location outside the root
    found["detail"] = detail
    return found


# ---------------------------------------------------------------- folder layout

DEFAULT_PATIENT_ID_PATTERN = r"^(?P<patient_id>[^_]+)_"


def _patient_id_from_stem(stem: str, pattern: re.Pattern[str]) -> str:
    match = pattern.search(stem)
    return (match.group("patient_id") if match else "") or stem


def _compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise SourceError(f"patient_id_pattern {pattern!r} is not a regular expression ({error})") from None
    if "patient_id" not in compiled.groupindex:
        raise SourceError(f"patient_id_pattern {pattern!r} needs a named group (?P<patient_id>...)")
    return compiled


class _FilesOptions(SourceOptions):
    """Options of the layouts that take patient ids from file names (``folder``, ``images``)."""

    patient_id_pattern: str = Field(
        DEFAULT_PATIENT_ID_PATTERN,
        description="regex searched in each file stem; its group (?P<patient_id>...) is the patient id "
        "(no match: the whole stem, each image its own patient)",
    )
    default_view: DefaultView = UNKNOWN_VIEW

    @field_validator("patient_id_pattern")
    @classmethod
    def _has_patient_group(cls, pattern: str) -> str:
        _compile_patient_pattern(pattern)  # SourceError (a ValueError) naming the pattern
        return pattern


class FolderOptions(_FilesOptions):
    """Options of a ``folder`` source: one subfolder per class."""

    kind: Literal["folder"] = "folder"


@register_source("folder", options=FolderOptions)
def folder_candidates(root: str, task: str, options: FolderOptions) -> list[dict[str, Any]]:
    """``root/<finding>/<file>``: one subfolder per class, the folder name is the finding.

    Files directly in `root` (README, metadata.csv) and hidden files are
    ignored; other files inside a class folder are excluded (not a PNG/JPEG),
    so that a folder of DICOMs shows up in the report instead of silently
    yielding nothing. The patient id is the pattern's ``patient_id`` group
    searched in the file stem, or the whole stem (each image its own patient).

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per file in a class folder.

    Raises:
        SourceError: No file lies in a class subfolder.
    """
    mapping = label_map_for_task(task, options.label_map)
    pattern = _compile_patient_pattern(options.patient_id_pattern)
    in_classes = [relative for relative in list_files(root) if "/" in relative]
    if not in_classes:
        raise SourceError(f"folder source root {root}: no files in class subfolders")
    return [
        candidate(
            root,
            relative,
            relative.split("/")[0],
            _patient_id_from_stem(PurePosixPath(relative).stem, pattern),
            mapping,
            view=options.default_view,
        )
        for relative in in_classes
    ]


class ImagesOptions(_FilesOptions):
    """Options of an ``images`` source: new images without labels, for batch inference."""

    kind: Literal["images"] = "images"


@register_source("images", options=ImagesOptions)
def images_candidates(root: str, task: str, options: ImagesOptions) -> list[dict[str, Any]]:
    """Every file below ``root``, at any depth, unlabelled: a drop of new images to score (cxr predict-batch).

    No finding is known, so every row is ``unlabelled finding`` for training and evaluation (which
    need labels); batch inference scores them. Files that are not PNG/JPEG are excluded rows, so
    that nothing in the drop goes unmentioned.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per file.

    Raises:
        SourceError: The root holds no file.
    """
    mapping = label_map_for_task(task, options.label_map)
    pattern = _compile_patient_pattern(options.patient_id_pattern)
    files = list_files(root)
    if not files:
        raise SourceError(f"images source root {root}: no files")
    return [
        candidate(
            root,
            relative,
            "",
            _patient_id_from_stem(PurePosixPath(relative).stem, pattern),
            mapping,
            view=options.default_view,
        )
        for relative in files
    ]


# ---------------------------------------------------------------- ieee8023 layout

IEEE8023_REQUIRED_COLUMNS = ("filename", "patientid", "finding", "view", "modality")
IEEE8023_DEFAULT_IMAGE_FOLDER = "images"


class Ieee8023Options(SourceOptions):
    """Options of an ``ieee8023`` source (none of its own)."""

    kind: Literal["ieee8023"] = "ieee8023"


@register_source("ieee8023", options=Ieee8023Options)
def ieee8023_candidates(root: str, task: str, options: Ieee8023Options) -> list[dict[str, Any]]:
    """The ieee8023 covid-chestxray-dataset: ``metadata.csv`` plus the image folder of its ``folder`` column.

    Every metadata row becomes a candidate: CT rows are kept as excluded
    (not an X-ray, file not read), lateral views as excluded, and a blank or
    "?" view becomes "unknown". A blank patient id makes the image its own patient.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per metadata row.
    """
    table = read_metadata_csv(child_uri(root, "metadata.csv"), IEEE8023_REQUIRED_COLUMNS, "ieee8023")
    mapping = label_map_for_task(task, options.label_map)
    found = []
    for record in table.to_dict("records"):
        filename = record["filename"].strip()
        folder = record.get("folder", "").strip() or IEEE8023_DEFAULT_IMAGE_FOLDER
        xray = _is_xray(record["modality"])
        found.append(
            candidate(
                root,
                f"{folder}/{filename}" if filename else "",
                record["finding"],
                record["patientid"].strip() or f"file:{filename}",
                mapping,
                view=_clean_view(record["view"]),
                age_group=age_group_from_age(record.get("age", "")),
                reasons=["" if xray else EXCLUDE_NOT_XRAY],
                read=xray,
                sex=record.get("sex", ""),
            )
        )
    return found


# ---------------------------------------------------------------- actualmed / figure1 (agchung)

AGCHUNG_REQUIRED_COLUMNS = ("patientid", "finding", "view", "modality")
AGCHUNG_IMAGE_FOLDER = "images"
_IMAGE_NAME_COLUMNS = ("imagename", "filename")
# Figure1 names several images of one case COVID-00003a, COVID-00003b.
_FIGURE1_CASE = re.compile(r"^(?P<case>COVID-\d+)[a-z]$", re.IGNORECASE)


def _agchung_candidates(
    root: str,
    task: str,
    label_map: Mapping[str, str | None] | None,
    what: str,
    patient_group: Callable[[str], str] = lambda patient: patient,
) -> list[dict[str, Any]]:
    table = read_metadata_csv(child_uri(root, "metadata.csv"), AGCHUNG_REQUIRED_COLUMNS, what)
    mapping = _task_map(task, label_map)
    name_column = next((column for column in _IMAGE_NAME_COLUMNS if column in table.columns), None)
    by_stem: dict[str, list[str]] | None = None  # images/<stem>.<ext>, listed only when a row needs it

    found = []
    for number, record in enumerate(table.to_dict("records"), start=1):  # data rows, 1-based
        patient = record["patientid"].strip()
        image_name = record[name_column].strip() if name_column else ""
        modality = record["modality"].strip()
        xray = not modality or _is_xray(modality)
        finding = record["finding"]
        options = {
            "view": _clean_view(record["view"]),
            "age_group": age_group_from_age(record.get("age", "")),
            "sex": record.get("sex", ""),
            "reasons": ["" if xray else EXCLUDE_NOT_XRAY],
            "read": xray,
        }
        group = patient_group(patient) if patient else ""
        if image_name:
            rows = [
                candidate(
                    root,
                    f"{AGCHUNG_IMAGE_FOLDER}/{image_name}",
                    finding,
                    group or f"file:{image_name}",
                    mapping,
                    **options,
                )
            ]
        else:
            if by_stem is None:
                by_stem = {}
                for relative in list_files(root):
                    path = PurePosixPath(relative)
                    if path.parent.as_posix() == AGCHUNG_IMAGE_FOLDER and is_image_name(relative):
                        by_stem.setdefault(path.stem, []).append(relative)
            matches = by_stem.get(patient, []) if patient else []
            rows = [candidate(root, relative, finding, group, mapping, **options) for relative in matches]
            if not rows:
                expected = f"{AGCHUNG_IMAGE_FOLDER}/{patient}" if patient else AGCHUNG_IMAGE_FOLDER
                detail = (
                    f"metadata.csv row {number}: no {name_column or 'imagename'} and no PNG/JPEG named {expected}.*"
                    if patient
                    else f"metadata.csv row {number}: names neither an image nor a patient"
                )
                rows = [
                    _missing_file(
                        candidate(root, "", finding, group or f"row:{number}", mapping, **options),
                        root,
                        expected,
                        detail,
                    )
                ]
        notes = " ".join(str(record.get("notes", "")).split())
        if not normalize_finding(finding) and notes:
            for row in rows:
                row["detail"] = row["detail"] or f"blank finding; notes: {notes[:200]}"
        found.extend(rows)
    return found


class ActualmedOptions(SourceOptions):
    """Options of an ``actualmed`` source (none of its own)."""

    kind: Literal["actualmed"] = "actualmed"


@register_source("actualmed", options=ActualmedOptions)
def actualmed_candidates(root: str, task: str, options: ActualmedOptions) -> list[dict[str, Any]]:
    """Actualmed COVID-19 chest X-ray dataset (agchung): ``metadata.csv`` + ``images/<imagename>``.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per metadata row (per matching image when the row names none).
    """
    return _agchung_candidates(root, task, options.label_map, "actualmed")


def _figure1_case(patient: str) -> str:
    match = _FIGURE1_CASE.match(patient)
    return match.group("case") if match else patient


class Figure1Options(SourceOptions):
    """Options of a ``figure1`` source (none of its own)."""

    kind: Literal["figure1"] = "figure1"


@register_source("figure1", options=Figure1Options)
def figure1_candidates(root: str, task: str, options: Figure1Options) -> list[dict[str, Any]]:
    """Figure1 COVID-19 chest X-ray dataset (agchung): ``metadata.csv`` + ``images/<patientid>.<ext>``.

    Images ``COVID-00003a``, ``COVID-00003b`` of one case are one patient, ``COVID-00003``.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per image named after a metadata row's patient (a missing-file row when none is).
    """
    return _agchung_candidates(root, task, options.label_map, "figure1", patient_group=_figure1_case)


# ---------------------------------------------------------------- Kaggle pediatric pneumonia

KAGGLE_SPLIT_FOLDERS = ("train", "val", "test")
KAGGLE_CLASS_FOLDERS = ("NORMAL", "PNEUMONIA")
_KAGGLE_PREFIXES = ("", "chest_xray/")
_KAGGLE_PERSON = re.compile(r"^(?P<patient_id>person\d+)_", re.IGNORECASE)
_KAGGLE_NORMAL = re.compile(r"^(?P<patient_id>.+)-\d+$")


def _kaggle_class(relative: str) -> str:
    """NORMAL / PNEUMONIA for ``<split>/<class>/<file>`` (deeper nesting allowed), else ""."""
    parts = relative.split("/")
    if len(parts) < 3 or parts[0].lower() not in KAGGLE_SPLIT_FOLDERS:
        return ""
    return parts[1].upper() if parts[1].upper() in KAGGLE_CLASS_FOLDERS else ""


def _kaggle_finding(class_folder: str, stem: str) -> str:
    if class_folder == "NORMAL":
        return "normal"
    lowered = stem.lower()
    if "bacteria" in lowered:
        return "pneumonia/bacterial"
    if "virus" in lowered:
        return "pneumonia/viral"
    return "pneumonia"


def _kaggle_patient(stem: str) -> str:
    for pattern in (_KAGGLE_PERSON, _KAGGLE_NORMAL):
        match = pattern.match(stem)
        if match:
            return match.group("patient_id")
    return stem


class KagglePneumoniaOptions(SourceOptions):
    """Options of a ``kaggle_pneumonia`` source."""

    kind: Literal["kaggle_pneumonia"] = "kaggle_pneumonia"
    default_view: DefaultView = UNKNOWN_VIEW


@register_source("kaggle_pneumonia", options=KagglePneumoniaOptions)
def kaggle_pneumonia_candidates(root: str, task: str, options: KagglePneumoniaOptions) -> list[dict[str, Any]]:
    """Kaggle pediatric pneumonia (Kermany et al.): ``[chest_xray/]{train,val,test}/{NORMAL,PNEUMONIA}/*``.

    Args:
        root: The source root (absolute local path or ``s3://`` URI): the
            ``chest_xray`` folder or its parent.
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per file in a ``<split>/<class>/`` folder, every one pediatric.

    Raises:
        SourceError: No file lies in ``{train,val,test}/{NORMAL,PNEUMONIA}/``.
    """
    mapping = _task_map(task, options.label_map)
    files = list_files(root)
    for prefix in _KAGGLE_PREFIXES:
        chosen = [
            relative for relative in files if relative.startswith(prefix) and _kaggle_class(relative[len(prefix) :])
        ]
        if chosen:
            break
    else:
        raise SourceError(
            f"kaggle_pneumonia source root {root}: no files in {{train,val,test}}/{{NORMAL,PNEUMONIA}}/ "
            f"(also looked under chest_xray/)"
        )
    found = []
    for relative in chosen:
        class_folder = _kaggle_class(relative[len(prefix) :])
        stem = PurePosixPath(relative).stem
        found.append(
            candidate(
                root,
                relative,
                _kaggle_finding(class_folder, stem),
                _kaggle_patient(stem),
                mapping,
                view=options.default_view,
                age_group=PEDIATRIC,
            )
        )
    return found


# ---------------------------------------------------------------- COVID-19 Radiography Database

_RADIOGRAPHY_IGNORED_FOLDERS = frozenset({"masks"})
_RADIOGRAPHY_IGNORED_SUFFIXES = frozenset({".xlsx", ".xls", ".csv", ".txt", ".md"})


class CovidRadiographyOptions(SourceOptions):
    """Options of a ``covid_radiography`` source."""

    kind: Literal["covid_radiography"] = "covid_radiography"
    default_view: DefaultView = UNKNOWN_VIEW


@register_source("covid_radiography", options=CovidRadiographyOptions)
def covid_radiography_candidates(root: str, task: str, options: CovidRadiographyOptions) -> list[dict[str, Any]]:
    """COVID-19 Radiography Database (Kaggle): ``<class>/images/*.png`` or ``<class>/*.png``; no patient ids.

    Args:
        root: The source root (absolute local path or ``s3://`` URI): the dataset
            folder or the download folder holding it.
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per file in a class folder (masks and spreadsheets ignored),
        each image its own patient.

    Raises:
        SourceError: No image lies in a class folder.
    """
    mapping = _task_map(task, options.label_map)
    files = [relative for relative in list_files(root) if "/" in relative]
    tops = {relative.split("/")[0] for relative in files}
    prefix = ""
    if len(tops) == 1 and "radiography" in next(iter(tops)).lower():  # root is the download folder
        prefix = next(iter(tops)) + "/"
        files = [relative for relative in files if "/" in relative[len(prefix) :]]
    found = []
    for relative in files:
        parts = relative[len(prefix) :].split("/")
        if len(parts) > 2 and parts[1].lower() in _RADIOGRAPHY_IGNORED_FOLDERS:
            continue
        if PurePosixPath(relative).suffix.lower() in _RADIOGRAPHY_IGNORED_SUFFIXES:
            continue
        # No patient ids in this dataset: each image is its own patient (see the module doc).
        found.append(
            candidate(root, relative, parts[0], PurePosixPath(relative).stem, mapping, view=options.default_view)
        )
    if not found:
        raise SourceError(f"covid_radiography source root {root}: no images in class folders (COVID/images/...)")
    return found


# ---------------------------------------------------------------- COVIDx split files

COVIDX_DEFAULT_SPLIT_FILES = ("train.txt", "val.txt", "test.txt")


def _covidx_image_folder(split_file: str, image_folders: Mapping[str, str] | None) -> str:
    if image_folders and split_file in image_folders:
        return str(image_folders[split_file]).strip("/")
    stem = PurePosixPath(split_file).stem.lower()
    for folder in ("train", "val", "test"):
        if stem.startswith(folder):
            return folder
    raise SourceError(
        f"covidx: cannot tell the image folder of split file {split_file!r} (its name does not start with "
        f"train, val or test); set image_folders: {{{split_file!r}: <folder>}}"
    )


def _covidx_split_files(root: str, split_files: list[str] | None) -> list[tuple[str, str]]:
    """[(split file, its text)]; explicit files must exist, defaults are those present."""
    if split_files is not None:
        if not split_files:
            raise SourceError("covidx: split_files is empty")
        return [(name, read_metadata_text(child_uri(root, name), "covidx split file")) for name in split_files]
    present = []
    for name in COVIDX_DEFAULT_SPLIT_FILES:
        try:
            present.append((name, read_metadata_text(child_uri(root, name), "covidx split file")))
        except FileNotFoundError:
            continue
    if not present:
        texts = [relative for relative in list_files(root) if "/" not in relative and relative.endswith(".txt")]
        raise SourceError(
            f"covidx source root {root}: none of {list(COVIDX_DEFAULT_SPLIT_FILES)} found; "
            f"set split_files (text files here: {texts})"
        )
    return present


class CovidxOptions(SourceOptions):
    """Options of a ``covidx`` source."""

    kind: Literal["covidx"] = "covidx"
    split_files: list[str] | None = Field(
        None,
        description="split files relative to root, one image per line 'patientId filename label [source]' "
        "(null: whichever of train.txt, val.txt, test.txt exist)",
    )
    image_folders: dict[str, str] | None = Field(
        None,
        description="{split file: its image folder} (null: train, val or test after the split file name's start)",
    )
    default_view: DefaultView = UNKNOWN_VIEW

    @field_validator("split_files", mode="before")
    @classmethod
    def _one_file(cls, split_files: Any) -> Any:
        return [split_files] if isinstance(split_files, str) else split_files  # one file given without a list


@register_source("covidx", options=CovidxOptions)
def covidx_candidates(root: str, task: str, options: CovidxOptions) -> list[dict[str, Any]]:
    """COVIDx CXR: split files of ``patientId filename label [source]`` lines, images in split folders.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per split-file line (blank lines and ``#`` comments skipped).

    Raises:
        SourceError: A line is not at least ``patientId filename label`` (named
            ``file:line``), no split file is found, or an image folder cannot be told.
        FileNotFoundError: A split file named in `options` does not exist.
    """
    mapping = _task_map(task, options.label_map, layout="covidx")
    split_files, image_folders = options.split_files, options.image_folders
    unknown = sorted(set(image_folders or {}) - set(split_files or COVIDX_DEFAULT_SPLIT_FILES))
    if unknown:
        raise SourceError(f"covidx: image_folders names files that are not split files: {unknown}")
    found = []
    for split_file, text in _covidx_split_files(root, split_files):
        folder = _covidx_image_folder(split_file, image_folders)
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            tokens = stripped.split()
            if len(tokens) < 3:
                raise SourceError(
                    f"{child_uri(root, split_file)}:{number}: expected 'patientId filename label [source]', "
                    f"got {line!r}"
                )
            if len(tokens) == 3:
                patient, filename, label = tokens
            else:
                patient, filename, label = tokens[0], " ".join(tokens[1:-2]), tokens[-2]
            found.append(
                candidate(
                    root,
                    f"{folder}/{filename}" if folder else filename,
                    label,
                    patient,
                    mapping,
                    view=options.default_view,
                )
            )
    return found


# ---------------------------------------------------------------- generic CSV / Parquet manifest

_MANIFEST_PATH_COLUMNS = ("path", "uri")
_MANIFEST_FINDING_COLUMNS = ("label", "finding")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_manifest_table(uri: str) -> pd.DataFrame:
    if not uri.lower().endswith(_PARQUET_SUFFIXES):
        return read_metadata_csv(uri, (), "manifest")
    try:
        data = read_bytes(uri)
    except MissingFileError:
        raise FileNotFoundError(f"manifest {uri} does not exist") from None
    try:
        table = pd.read_parquet(io.BytesIO(data))
    except ImportError as error:
        raise SourceError(f"{uri}: reading Parquet needs pyarrow ({error})") from None
    except Exception as error:  # noqa: BLE001  (pyarrow raises its own types on a corrupt file)
        raise SourceError(f"{uri}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    table.columns = [str(column).strip() for column in table.columns]
    return table.astype(object).where(table.notna(), "").astype(str)


def _inside_root(value: str, root: str) -> str | None:
    """`value` relative to root when it is an absolute path/URI under root; None when it is absolute elsewhere."""
    if "://" in value:
        base = root.rstrip("/") + "/"
        return value[len(base) :] if is_s3_uri(root) and value.startswith(base) else None
    if value.startswith("/") and not is_s3_uri(root):
        normalised = os.path.normpath(value)
        return os.path.relpath(normalised, root) if normalised.startswith(root.rstrip("/") + "/") else value
    return value


class ManifestOptions(SourceOptions):
    """Options of a ``manifest`` source."""

    kind: Literal["manifest"] = "manifest"
    manifest_file: str = Field(
        "manifest.csv", description="the manifest, relative to root: CSV, or Parquet (.parquet, .pq)"
    )
    default_view: DefaultView = UNKNOWN_VIEW


@register_source("manifest", options=ManifestOptions)
def manifest_candidates(root: str, task: str, options: ManifestOptions) -> list[dict[str, Any]]:
    """A CSV/Parquet manifest: ``path``/``uri``, ``label``/``finding``, optional patient_id, view, age.

    Args:
        root: The source root (absolute local path or ``s3://`` URI).
        task: ``binary`` or ``multiclass``.
        options: The source's config.

    Returns:
        One candidate per manifest row; a path outside the root is excluded, never opened.

    Raises:
        SourceError: A required column is missing, an age_group is invalid, or the
            file is not readable CSV/Parquet.
        FileNotFoundError: The manifest file does not exist.
    """
    manifest_file, default_view = options.manifest_file, options.default_view
    uri = child_uri(root, manifest_file)
    table = _read_manifest_table(uri)
    path_column = next((column for column in _MANIFEST_PATH_COLUMNS if column in table.columns), None)
    finding_column = next((column for column in _MANIFEST_FINDING_COLUMNS if column in table.columns), None)
    missing = [
        " or ".join(repr(c) for c in group)
        for group, column in ((_MANIFEST_PATH_COLUMNS, path_column), (_MANIFEST_FINDING_COLUMNS, finding_column))
        if column is None
    ]
    if missing:
        raise SourceError(f"{uri}: missing required column(s) {', '.join(missing)}; found {list(table.columns)}")
    mapping = _task_map(task, options.label_map)
    found = []
    for number, record in enumerate(table.to_dict("records"), start=1):  # data rows, 1-based
        value = str(record[path_column]).strip()
        age_group = _manifest_age_group(record, uri, number)
        view = _clean_view(record.get("view", "")) if str(record.get("view", "")).strip() else default_view
        relative = _inside_root(value, root)
        stem = PurePosixPath(value.replace("\\", "/")).stem
        patient = str(record.get("patient_id", "")).strip() or stem
        if relative is None:  # an absolute URI elsewhere: never opened
            row = candidate(
                root,
                "",
                record[finding_column],
                patient,
                mapping,
                view=view,
                age_group=age_group,
                reasons=[EXCLUDE_OUTSIDE_ROOT],
                sex=record.get("sex", ""),
            )
            row.update(uri=value, detail=f"{value!r} is not inside the source root {root}")
        else:
            row = candidate(
                root,
                relative,
                record[finding_column],
                patient,
                mapping,
                view=view,
                age_group=age_group,
                sex=record.get("sex", ""),
            )
            if not value:
                row["detail"] = f"{manifest_file} row {number}: blank {path_column}"
        found.append(row)
    return found


def _manifest_age_group(record: Mapping[str, Any], uri: str, number: int) -> str:
    if "age_group" in record:
        value = str(record["age_group"]).strip().lower()
        if value not in ("", ADULT, PEDIATRIC):
            raise SourceError(
                f"{uri} row {number}: age_group {record['age_group']!r} is not {ADULT!r}, {PEDIATRIC!r} or blank"
            )
        if value:
            return value
    return age_group_from_age(record.get("age", ""))


# ---------------------------------------------------------------- listing


def _plain(text: str) -> str:
    return text.replace("``", "`")


def describe_sources() -> str:
    """What ``cxr sources`` prints: every registered kind with its summary and options.

    Returns:
        Text: the fields every source has, then one block per kind (sorted) giving
        its adapter's summary and each of its own options' name, type, default and
        description, all read from the registry and the options models.
    """
    lines = ["Source kinds (data.sources[].kind in a run config).", "", "Every source has:"]
    lines += _option_lines(option_infos(SourceOptions))
    for kind, entry in source_kinds().items():
        lines += ["", f"{kind}: {_plain(entry.summary)}"]
        own = entry.own_options()
        lines += _option_lines(own) if own else ["    (no options of its own)"]
    return "\n".join(lines)


def _option_lines(infos: Sequence[OptionInfo]) -> list[str]:
    lines = []
    for info in infos:
        default = "required" if info.default == "required" else f"default {info.default}"
        lines.append(f"    {info.name}: {info.type}, {default}")
        if info.description:
            lines.append(f"        {_plain(info.description)}")
    return lines
