from pathlib import Path

import pytest

from components.config import ConfigError, load_run_config, parse_run_config
from cxr.cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(path.name for path in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name):
    config = load_run_config(CONFIGS / name)
    assert config.backbones
    assert config.task in ("binary", "multiclass")


def test_every_shipped_config_is_tested():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 11
    assert not list(CONFIGS.glob("*.yml"))  # the glob above would miss them


def test_paper_config_has_three_backbones_at_paper_sizes():
    config = load_run_config(CONFIGS / "paper.yaml")
    assert {(b.name, b.image_size, b.weights) for b in config.backbones} == {
        ("InceptionV3", 299, "imagenet"),
        ("Xception", 299, "imagenet"),
        ("MobileNet", 224, "imagenet"),
    }
    assert config.augmentation.copies_per_image == 63
    assert config.augmentation.mode == "offline"  # x64 is streamed into shards, not held in memory


def test_backbone_default_size_comes_from_registry():
    config = load_run_config(CONFIGS / "quickstart.yaml", {"backbones": [{"name": "Xception", "weights": "none"}]})
    assert config.backbones[0].image_size == 299


@pytest.mark.parametrize(
    "override, field, reason",
    [
        ({"task": "trinary"}, "task", "'binary' or 'multiclass'"),
        ({"split.train": 0.9}, "split", "must be 1.0"),
        (
            {"backbones.0.name": "ResNet9"},
            "backbones.0.name",
            "valid backbones: DenseNet121, EfficientNetB0, InceptionV3, MobileNet, MobileNetV2, ResNet50, Xception",
        ),
        ({"backbones.0.image_size": 16}, "backbones.0", "needs image_size >= 32"),
        ({"training.epochs": 0}, "training.epochs", "greater than or equal to 1"),
        ({"training.epoch": 3}, "training.epoch", "Extra inputs are not permitted"),
        (
            {"augmentation.operations": {"rotation": {"enabled": False}}},
            "augmentation",
            "unknown augmentation operation 'rotation'",
        ),
        ({"augmentation.mode": "streaming"}, "augmentation.mode", "'in_memory', 'offline' or 'on_the_fly'"),
        ({"augmentation.images_per_shard": 4}, "augmentation.images_per_shard", "greater than or equal to 16"),
        ({"data.sources": []}, "data.sources", "at least 1 item"),
        (
            {"data.sources.0.kind": "tiff"},
            "data.sources.0.kind",
            "unknown source kind 'tiff'; valid kinds: ['actualmed', 'covid_radiography', 'covidx', 'dicom', "
            "'figure1', 'folder', 'ieee8023', 'images', 'kaggle_pneumonia', 'manifest', 'rsna_pneumonia']",
        ),
        (
            {"data.sources.0.manifest_file": "m.csv"},
            "data.sources.0.manifest_file",
            "option 'manifest_file' does not apply to kind 'folder' (an option of manifest)",
        ),
        ({"data.sources.0.patient_id_pattern": "^(.+)_"}, "data.sources.0.patient_id_pattern", "named group"),
        ({"evaluation.threshold": {"rule": "fixed"}}, "evaluation.threshold", "rule fixed needs a value"),
        ({"evaluation.threshold": {"rule": "youden", "value": 0.3}}, "evaluation.threshold", "takes no value"),
        ({"evaluation.external_sources": ["nope"]}, "<root>", "'nope' not among data.sources"),
        (
            {"registry.gate.floors": [{"metric": "sensitivity:COVID", "min": 0.5}]},
            "<root>",
            "registry.gate.floors.0.metric: 'sensitivity:COVID' is not a metric of the multiclass task",
        ),
        ({"registry.gate.floors": [{"metric": "ece", "min": 0.1}]}, "<root>", "ece is lower-is-better"),
        ({"registry.gate.floors": [{"metric": "f1_macro", "min": 2}]}, "registry.gate.floors.0.min", "less than"),
        ({"training.monitor": "val_accuracy"}, "training.monitor", "'val_f1_macro'"),
    ],
)
def test_invalid_config_names_field_and_reason(override, field, reason):
    with pytest.raises(ConfigError) as error:
        load_run_config(CONFIGS / "quickstart.yaml", override)
    message = str(error.value)
    assert "quickstart.yaml" in message
    assert f"  {field}:" in message
    assert reason in message


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML") as raised:
        load_run_config(bad)
    message = str(raised.value)
    assert "\n" not in message  # one line, at a place in the file named
    assert "<unicode string>" not in message
    assert "at line 1, column 16" in message
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_run_config(bad)


def test_cli_rejects_invalid_config_before_running(capsys):
    code = main(["check-config", "--config", str(CONFIGS / "quickstart.yaml"), "--set", "training.batch_size=-1"])
    assert code == 2
    assert "training.batch_size" in capsys.readouterr().err


def test_run_config_round_trips_through_its_json_dump():
    # The runner dumps the config (source roots made absolute) and steps validate it again:
    # every source's own options must survive the dump.
    config = load_run_config(CONFIGS / "public-manifest.yaml")
    dumped = config.model_dump(mode="json")
    assert dumped["data"]["sources"][1]["manifest_file"] == "manifest.csv"
    assert parse_run_config(dumped) == config
