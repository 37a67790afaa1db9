"""Naming a registered version for `cxr evaluate`: the URI forms, resolution in a real MLflow registry,
the model-contract check and the pooled predictions of the card's examples."""

import pytest
from mlflow import MlflowClient

from components.config import ConfigError
from components.labels import TASK_LABELS
from components.registered_evaluation import (
    ModelContractMismatchError,
    ModelReference,
    ModelReferenceError,
    card_folder_name,
    check_model_contract,
    evaluated_on_tag,
    evaluation_summary,
    parse_model_reference,
    pooled_predictions,
    resolve_model_version,
)
from components.registry import RegisteredModelNotFoundError
from tests.factories import scored_predictions


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/cxr-classifier@champion", ("cxr-classifier", "champion", None)),
        ("models:/cxr-classifier/3", ("cxr-classifier", None, "3")),
    ],
)
def test_a_reference_names_a_model_and_an_alias_or_a_version(uri, expected):
    assert tuple(parse_model_reference(uri)) == expected


@pytest.mark.parametrize(
    "uri", ["runs:/abc/model", "models:/cxr-classifier", "models:/cxr-classifier/Production", "cxr-classifier", ""]
)
def test_any_other_form_is_refused_naming_both_forms(uri):
    with pytest.raises(ModelReferenceError) as caught:
        parse_model_reference(uri)
    assert repr(uri) in str(caught.value)
    assert "models:/<name>@<alias>" in str(caught.value)
    assert "models:/<name>/<version>" in str(caught.value)


def test_a_malformed_reference_is_a_config_error():
    # cxr exits 2 on a ConfigError: a usage mistake, like a bad --set.
    assert issubclass(ModelReferenceError, ConfigError)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real SQLite MLflow registry with model `m`: versions 1 and 2, `champion` on 1 (read only by the tests)."""
    tmp_path = tmp_path_factory.mktemp("registry")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path / "model"))
    client.set_registered_model_alias("m", "champion", "1")
    return client


def test_an_alias_resolves_to_the_version_holding_it(registry):
    assert str(resolve_model_version(registry, ModelReference("m", "champion", None)).version) == "1"


def test_a_number_resolves_to_that_version(registry):
    assert str(resolve_model_version(registry, ModelReference("m", None, "2")).version) == "2"


def test_an_unknown_alias_lists_the_aliases(registry):
    with pytest.raises(RegisteredModelNotFoundError) as caught:
        resolve_model_version(registry, ModelReference("m", "nope", None))
    assert "no alias 'nope'" in str(caught.value)
    assert "champion (version 1)" in str(caught.value)


def test_an_unknown_version_lists_the_versions(registry):
    with pytest.raises(RegisteredModelNotFoundError) as caught:
        resolve_model_version(registry, ModelReference("m", None, "99"))
    assert "no version 99" in str(caught.value)
    assert "its versions: 1, 2" in str(caught.value)


def test_an_unknown_model_lists_the_registered_models(registry):
    with pytest.raises(RegisteredModelNotFoundError) as caught:
        resolve_model_version(registry, ModelReference("other", "champion", None))
    assert "no registered model 'other'" in str(caught.value)
    assert "registered models: m" in str(caught.value)


def test_a_model_of_the_configured_task_passes_the_contract_check():
    contract = {"task": "binary", "class_names": list(TASK_LABELS["binary"])}
    check_model_contract(contract, "models:/m/1", "binary", TASK_LABELS["binary"])


def test_a_model_of_another_task_is_refused_naming_both():
    contract = {"task": "multiclass", "class_names": list(TASK_LABELS["multiclass"])}
    with pytest.raises(ModelContractMismatchError) as caught:
        check_model_contract(contract, "models:/m/1", "binary", TASK_LABELS["binary"])
    assert "models:/m/1 predicts task 'multiclass'" in str(caught.value)
    assert "the run config's task is 'binary'" in str(caught.value)


def test_classes_in_another_order_are_refused():
    contract = {"task": "binary", "class_names": ["COVID-19", "non-COVID"]}
    with pytest.raises(ModelContractMismatchError):
        check_model_contract(contract, "models:/m/1", "binary", TASK_LABELS["binary"])


def test_pooled_predictions_hold_every_row_in_order():
    first = scored_predictions(0.8, split="external:a", n_patients=4, seed=1)
    second = scored_predictions(0.6, split="external:b", n_patients=6, seed=2)
    pooled = pooled_predictions([first, second], "external")
    assert pooled.split == "external"
    assert pooled.keys == first.keys + second.keys
    assert pooled.probabilities == first.probabilities + second.probabilities


def test_pooling_nothing_is_refused():
    with pytest.raises(ValueError, match="no predictions"):
        pooled_predictions([], "external")


def test_names_of_the_card_folder_and_the_version_tag():
    assert card_folder_name("cxr-classifier", "3", "0123abcd") == "cxr-classifier-v3-on-0123abcd"
    assert evaluated_on_tag("0123abcd") == "evaluated_on.0123abcd"


def test_the_summary_says_what_was_evaluated_on_what_and_that_no_alias_moved():
    summary = evaluation_summary(ModelReference("m", "champion", None), "3", "0123abcd", "argmax (multiclass)")
    assert "m version 3 (given as models:/m@champion) on data version 0123abcd" in summary
    assert "no alias moved" in summary
