"""Pure library code of the chest X-ray MLOps system: no ZenML imports here (README, "Module map")."""

# The DICOM source kinds (dicom, rsna_pneumonia) register themselves with components.sources when
# imported: imported with the package, they are known wherever any source kind is (run configs,
# build_manifest, `cxr sources`), whatever was imported first.
import components.dicom_sources  # noqa: F401, E402
