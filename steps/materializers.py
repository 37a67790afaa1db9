"""A ZenML materializer that stores Keras models in the native `.keras` format.

ZenML's own TensorFlow integration pins TensorFlow 2.14 / Keras 2, so we do
not install it; without a materializer ZenML would pickle the model.
"""

import os
import tempfile
from typing import Any, ClassVar

import keras
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

MODEL_FILENAME = "model.keras"


class KerasModelMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (keras.Model,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, model: keras.Model) -> None:
        # Keras writes to a local path; the artifact store may be S3, so copy.
        with tempfile.TemporaryDirectory() as folder:
            local_path = os.path.join(folder, MODEL_FILENAME)
            model.save(local_path)
            fileio.copy(local_path, os.path.join(self.uri, MODEL_FILENAME), overwrite=True)

    def load(self, data_type: type[Any]) -> keras.Model:
        with tempfile.TemporaryDirectory() as folder:
            local_path = os.path.join(folder, MODEL_FILENAME)
            fileio.copy(os.path.join(self.uri, MODEL_FILENAME), local_path)
            return keras.models.load_model(local_path)

    def extract_metadata(self, model: keras.Model) -> dict[str, Any]:
        return {
            "parameters": int(model.count_params()),
            "input_shape": str(model.input_shape),
            "output_shape": str(model.output_shape),
        }
