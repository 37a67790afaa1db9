"""The ZenML materializer of offline-expanded training shards (components.shards.ShardSet).

Saving moves the shard files from the step's scratch folder into the
artifact store (a rename on a local store; an upload, then removal, on a
remote one such as S3). Loading reads a local store in place; from a remote
store the shards are first copied onto the node's disk, into a cache folder
keyed by their digest, so tf.data reads local files and a second train step
on the same node copies nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from components.shards import INDEX_FILE, ShardSet

# Where shards from a remote artifact store are copied on the training node
# (give it a volume with room for the expanded set).
SHARD_CACHE_ENV = "CXR_SHARD_CACHE"


def is_local_uri(uri: str) -> bool:
    return "://" not in uri


def shard_cache_root() -> str:
    return os.environ.get(SHARD_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "cxr-shard-cache")


def copy_shards_to_node(uri: str, cache_root: str) -> ShardSet:
    """Copy a shard folder from the artifact store to `cache_root/<digest>` unless already there.

    The index is written last, so a folder with an index is complete (an
    interrupted copy is redone).
    """
    with fileio.open(f"{uri.rstrip('/')}/{INDEX_FILE}", "r") as handle:
        index = json.loads(handle.read())
    local = os.path.join(cache_root, index["digest"])
    if not os.path.exists(os.path.join(local, INDEX_FILE)):
        os.makedirs(local, exist_ok=True)
        for name in index["shards"]:
            fileio.copy(f"{uri.rstrip('/')}/{name}", os.path.join(local, name), overwrite=True)
        with open(os.path.join(local, INDEX_FILE), "w") as handle:
            json.dump(index, handle, indent=2)
    return ShardSet(local, index)


class ShardSetMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ShardSet,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def save(self, shards: ShardSet) -> None:
        names = [*shards.index["shards"], INDEX_FILE]  # the index last: its presence marks a complete set
        for name in names:
            source, target = os.path.join(shards.folder, name), f"{self.uri.rstrip('/')}/{name}"
            if shards.scratch and is_local_uri(self.uri):
                os.makedirs(self.uri, exist_ok=True)
                shutil.move(source, target)
            else:
                fileio.copy(source, target, overwrite=True)
        if shards.scratch:
            shutil.rmtree(shards.folder, ignore_errors=True)

    def load(self, data_type: type[Any]) -> ShardSet:
        if is_local_uri(self.uri):
            return ShardSet.open(self.uri)
        return copy_shards_to_node(self.uri, shard_cache_root())

    def compute_content_hash(self, shards: ShardSet) -> str:
        return shards.digest()

    def extract_metadata(self, shards: ShardSet) -> dict[str, Any]:
        index = shards.index
        return {
            "images": index["images"],
            "shards": len(index["shards"]),
            "image_shape": str(index["image_shape"]),
            "copies_per_image": index["copies_per_image"],
            "digest": index["digest"],
        }
