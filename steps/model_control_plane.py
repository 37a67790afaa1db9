"""Mirror the MLflow aliases in ZenML's Model Control Plane, so that both registries agree.

`champion` is the ZenML stage ``production``, `challenger` is ``staging``
(stages: none, staging, production, archived; setting production with
``force=True`` archives the previous holder). The ZenML model version of
MLflow version N is named ``vN``. Not a step: the promote step and the
``cxr promote`` / ``cxr rollback`` commands call it.
"""

from zenml.client import Client
from zenml.enums import ModelStages

from components.intended_use import INTENDED_USE
from components.registry import CHAMPION


def zenml_version_name(version: str) -> str:
    """The ZenML model version name of MLflow version `version`."""
    return f"v{version}"


def mirror_alias(model_name: str, version: str, alias: str, description: str = "") -> str:
    """Give the ZenML model version of `version` the stage matching `alias`; returns the stage set.

    Creates the ZenML model and model version when missing. Lookups are by exact name and
    then by id: ZenML's get-by-name also matches a prefix (``cxr-a`` finds ``cxr-a-binary``).
    """
    client = Client()
    model = next((m for m in client.list_models(name=model_name, size=100).items if m.name == model_name), None)
    if model is None:
        model = client.create_model(
            name=model_name, description="Chest X-ray classifier (MLflow registry mirror)", limitations=INTENDED_USE
        )
    name = zenml_version_name(version)
    found = client.list_model_versions(model=model.id, name=name, size=100).items
    model_version = next((v for v in found if v.name == name), None)
    if model_version is None:
        model_version = client.create_model_version(model.id, name=name, description=description[:2000] or None)
    stage = ModelStages.PRODUCTION if alias == CHAMPION else ModelStages.STAGING
    client.update_model_version(model.id, model_version.id, stage=stage, force=True)
    return stage.value
