"""FeatureLookup's checks of a Feast config before it reads Redis: the
environment variables the file needs, and one attempt per lookup."""
import pytest
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

from deployments.nodes.feature_lookup import FeatureLookup, FeatureLookupConfig, one_attempt_per_lookup, unset_variables
from deployments.paths import PROJECT_ROOT

CLUSTER_YAML = PROJECT_ROOT / "configs" / "feast" / "cluster" / "feature_store.yaml"


def test_unset_variables_of_the_cluster_config_not_those_in_its_comments(monkeypatch):
    monkeypatch.delenv("FEAST_REDIS_CONNECTION", raising=False)
    monkeypatch.delenv("FEAST_REGISTRY_PATH", raising=False)
    assert "${VAR}" in CLUSTER_YAML.read_text()  # a comment, not a setting
    assert unset_variables(CLUSTER_YAML) == ["FEAST_REDIS_CONNECTION", "FEAST_REGISTRY_PATH"]
    monkeypatch.setenv("FEAST_REGISTRY_PATH", "/tmp/registry.db")
    assert unset_variables(CLUSTER_YAML) == ["FEAST_REDIS_CONNECTION"]
    monkeypatch.setenv("FEAST_REDIS_CONNECTION", "")  # set, even empty: Feast expands it
    assert unset_variables(CLUSTER_YAML) == []


def test_unset_variables_reads_both_forms_in_nested_values(tmp_path, monkeypatch):
    monkeypatch.delenv("SG_A", raising=False)
    monkeypatch.delenv("SG_B", raising=False)
    (tmp_path / "feature_store.yaml").write_text("project: p\nregistry:\n  path: $SG_A/r.db\nlist: [x, '${SG_B}']\n")
    assert unset_variables(tmp_path / "feature_store.yaml") == ["SG_A", "SG_B"]


def test_feature_lookup_refuses_to_start_naming_the_unset_variable(monkeypatch):
    monkeypatch.setenv("FEAST_REGISTRY_PATH", "/nonexistent/registry.db")
    monkeypatch.delenv("FEAST_REDIS_CONNECTION", raising=False)
    with pytest.raises(ValueError, match=r"needs the environment variable\(s\) FEAST_REDIS_CONNECTION, unset here"):
        FeatureLookup(FeatureLookupConfig(repo_path="configs/feast/cluster"))


@pytest.mark.parametrize(
    "connection, expected",
    [
        ("redis:6379,password=x=y,ssl=true", "redis:6379,password=x=y,ssl=true,retry=null"),
        ("redis:6379", "redis:6379,retry=null"),
        ("redis:6379,retry=null,ssl=true", "redis:6379,retry=null,ssl=true"),  # the operator's choice stays
    ],
)
def test_one_attempt_per_lookup_unless_the_connection_string_says_otherwise(connection, expected):
    store = RedisOnlineStoreConfig(connection_string=connection)
    one_attempt_per_lookup(store)
    assert store.connection_string == expected


def test_other_stores_and_redis_cluster_are_left_alone():
    cluster = RedisOnlineStoreConfig(redis_type="redis_cluster", connection_string="a:1,b:2")
    one_attempt_per_lookup(cluster)
    assert cluster.connection_string == "a:1,b:2"
    sqlite = SqliteOnlineStoreConfig(path="online_store.db")
    one_attempt_per_lookup(sqlite)
    assert sqlite.path == "online_store.db"
