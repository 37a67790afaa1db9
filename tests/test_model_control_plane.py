"""The ZenML Model Control Plane mirror of the MLflow aliases (steps/model_control_plane.py), on the real local stack."""

from zenml.client import Client

from steps.model_control_plane import mirror_alias


def test_stages_follow_the_aliases_and_a_name_prefix_is_not_another_model(local_stack):
    # ZenML's get-by-name also matches a prefix: "mcp-a" must not land on "mcp-a-binary".
    assert mirror_alias("mcp-a-binary", "1", "champion") == "production"
    assert mirror_alias("mcp-a", "1", "challenger") == "staging"
    assert mirror_alias("mcp-a", "2", "champion") == "production"
    assert mirror_alias("mcp-a", "1", "champion") == "production"  # a rollback: v2 is archived

    client = Client()
    stages = {v.name: v.stage for v in client.list_model_versions(model="mcp-a").items}
    assert stages == {"v1": "production", "v2": "archived"}
    assert client.get_model_version("mcp-a-binary", "v1").stage == "production"
