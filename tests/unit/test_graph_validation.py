"""Graph specs are checked when the config is loaded: every problem names the
path of the offending key."""
import pytest

from apps.graph import parse_args
from deployments.graph.validate import GraphSpecError
from tests.graph_callables import graph_args, node, py, sequence


def problems(args: dict) -> dict[str, str]:
    with pytest.raises(GraphSpecError) as caught:
        parse_args(args)
    return {p.path: p.message for p in caught.value.problems}


def split(*weights: float) -> dict:
    return {
        "kind": "split",
        "name": "ab",
        "sticky_key": "request.user_id",
        "variants": [{"name": f"v{i}", "weight": w, "then": node("d")} for i, w in enumerate(weights)],
    }


NODES = {"d": py("double", value="request.x")}


def test_a_valid_graph_loads():
    args = parse_args(graph_args(NODES, sequence("d"), {"y": "d"}))
    assert args.graph.nodes["d"].kind == "python"


def test_split_weights_must_add_up_to_one():
    found = problems(graph_args(NODES, sequence("d", split(0.5, 0.4)), {"y": "ab"}))
    assert found == {"graph.flow.steps[1].variants": "weights sum to 0.9, must be 1"}


def test_a_switch_needs_a_default():
    switch = {"kind": "switch", "name": "s", "cases": [{"when": {"field": "request.x", "op": "gt", "value": 1}, "then": node("d")}]}
    assert problems(graph_args(NODES, switch, {"y": "s"})) == {
        "graph.flow.default": "a switch needs a default (the branch taken when no case matches)"
    }


def test_a_switch_on_a_request_field_that_does_not_exist():
    switch = {
        "kind": "switch",
        "name": "s",
        "cases": [{"when": {"field": "request.segment", "value": "new"}, "then": node("d")}],
        "default": {"kind": "skip"},
    }
    found = problems(graph_args(NODES, switch, {"y": "s"}))
    assert found == {"graph.flow.cases[0].when.field": "request has no field 'segment' (fields: ['user_id', 'x'])"}


def test_unknown_node_in_the_flow():
    found = problems(graph_args(NODES, sequence("d", "rnaker"), {"y": "d"}))
    assert found == {"graph.flow.steps[1].node": "unknown node 'rnaker' (nodes: ['d'])"}


def test_unknown_node_in_an_input_and_in_the_output():
    nodes = {"d": py("double", value="featurs.x")}
    found = problems(graph_args(nodes, sequence("d"), {"y": "rankr.scores"}))
    assert found["graph.nodes.d.inputs.value"] == "unknown node 'featurs' (nodes: ['d'], or request)"
    assert found["graph.output.y"] == "unknown node 'rankr' (nodes: ['d'], or request)"


def test_a_node_that_reads_a_node_the_flow_runs_later():
    nodes = {"a": py("double", value="b"), "b": py("double", value="request.x")}
    found = problems(graph_args(nodes, sequence("a", "b"), {"y": "a"}))
    assert found == {"graph.flow.steps[0].node": "node a's input value reads 'b', which has not run at this point of the flow"}


def test_cycles_are_named():
    nodes = {"a": py("add", a="b", b="request.x"), "b": py("add", a="c", b="request.x"), "c": py("double", value="a")}
    found = problems(graph_args(nodes, sequence("a", "b", "c"), {"y": "c"}))
    assert found["graph.nodes.a.inputs.a"] == "cycle: a -> b -> c -> a"
    assert sum("cycle" in message for message in found.values()) == 1  # reported once, not per member


def test_an_inline_node_cannot_ask_for_gpus():
    nodes = {"d": {**py("double", value="request.x"), "ray_actor_options": {"num_gpus": 1}}}
    found = problems(graph_args(nodes, sequence("d"), {"y": "d"}))
    assert found == {
        "graph.nodes.d.ray_actor_options.num_gpus": "an inline node runs in the calling replica, which has no GPU of its own: use placement: deployment"
    }


def test_the_same_node_may_have_gpus_in_its_own_deployment():
    nodes = {"d": {**py("double", value="request.x"), "placement": "deployment", "num_replicas": 2, "ray_actor_options": {"num_gpus": 1}}}
    assert parse_args(graph_args(nodes, sequence("d"), {"y": "d"})).graph.nodes["d"].num_replicas == 2


def test_deployment_settings_on_an_inline_node():
    nodes = {"d": {**py("double", value="request.x"), "num_replicas": 3}}
    assert problems(graph_args(nodes, sequence("d"), {"y": "d"})) == {
        "graph.nodes.d.num_replicas": "only for placement: deployment (this node is inline)"
    }


def test_autoscaling_config_is_checked_against_ray_serve():
    nodes = {"d": {**py("double", value="request.x"), "placement": "deployment", "autoscaling_config": {"min_replicas": 3, "max_replicas": 1}}}
    found = problems(graph_args(nodes, sequence("d"), {"y": "d"}))
    assert found == {
        "graph.nodes.d.python.autoscaling_config": "max_replicas (1) must be greater than or equal to min_replicas (3)!"
    }


def test_a_kind_s_bad_setting_is_named_by_path():
    nodes = {"r": {"kind": "triton_model", "config": {"timout_s": 1}, "inputs": {"features": "request.x"}}}
    found = problems(graph_args(nodes, sequence("r"), {"y": "r"}))
    assert found == {"graph.nodes.r.triton_model.config.timout_s": "Extra inputs are not permitted"}


def test_an_unknown_kind():
    found = problems(graph_args({"r": {"kind": "tensorflow"}}, sequence("r"), {"y": "r"}))
    assert list(found) == ["graph.nodes.r"]
    assert "tensorflow" in found["graph.nodes.r"]


def test_a_python_callable_that_does_not_import():
    nodes = {"d": {"kind": "python", "config": {"callable": "tests.graph_callables:nope"}}}
    found = problems(graph_args(nodes, sequence("d"), {"y": "d"}))
    assert found == {"graph.nodes.d.python.config.callable": "module 'tests.graph_callables' has no attribute 'nope'"}


def test_inputs_must_match_the_callable_s_parameters():
    nodes = {"d": py("add", a="request.x", c="request.x")}
    found = problems(graph_args(nodes, sequence("d"), {"y": "d"}))
    assert found == {
        "graph.nodes.d.inputs": "missing 'b' (python needs ['a', 'b'])",
        "graph.nodes.d.inputs.c": "python takes no input 'c' (it takes ['a', 'b'])",
    }


def test_a_model_node_needs_its_features_input():
    nodes = {"r": {"kind": "triton_model", "config": {}}}
    assert problems(graph_args(nodes, sequence("r"), {"y": "r"})) == {
        "graph.nodes.r.inputs": "missing 'features' (triton_model needs ['features'])"
    }


def test_an_llm_prompt_s_fields_are_its_inputs():
    nodes = {"e": {"kind": "llm", "config": {"model": "m"}, "prompt_template": "why {item_id}?", "inputs": {}}}
    assert problems(graph_args(nodes, sequence("e"), {"y": "e"})) == {
        "graph.nodes.e.inputs": "missing 'item_id' (llm needs ['item_id'])"
    }


def test_a_cuda_torch_model_must_not_be_inline():
    nodes = {"t": {"kind": "torch_model", "config": {"model": "m", "device": "cuda"}, "inputs": {"features": "request.x"}}}
    found = problems(graph_args(nodes, sequence("t"), {"y": "t"}))
    assert list(found) == ["graph.nodes.t.torch_model"]
    assert "an inline node runs in the calling replica, which has no GPU" in found["graph.nodes.t.torch_model"]


def test_step_names_must_not_shadow_nodes():
    shadow = {"kind": "shadow", "name": "d", "primary": node("d"), "candidate": node("d")}
    assert problems(graph_args(NODES, shadow, {"y": "d"})) == {"graph.flow.name": "'d' is already a node's name (or request)"}


def test_several_problems_are_reported_together():
    found = problems(graph_args(NODES, sequence("d", split(0.2, 0.2), "zz"), {"y": "ab"}))
    assert set(found) == {"graph.flow.steps[1].variants", "graph.flow.steps[2].node"}


def test_extra_keys_are_refused():
    args = graph_args(NODES, sequence("d"), {"y": "d"})
    args["graph"]["flow"]["stesp"] = []
    assert problems(args) == {"graph.flow.sequence.stesp": "Extra inputs are not permitted"}


def test_a_node_placed_apart_reserves_a_cpu_to_compute_and_a_quarter_to_wait_on_a_backend():
    """Kinds that compute in the replica (user code, a PyTorch model) take a
    whole CPU unless told; kinds that wait on a remote backend (Triton, Feast,
    an LLM server) a quarter, as graph ingresses do; what the node's
    ray_actor_options say wins."""
    from deployments.nodes import TritonModelNode

    python = parse_args(graph_args({"d": {**py("double", value="request.x"), "placement": "deployment"}}, sequence("d"), {"y": "d"}))
    assert python.graph.nodes["d"].deployment_options("d")["ray_actor_options"] == {"num_cpus": 1.0}

    def triton(**extra):
        spec = {"kind": "triton_model", "config": {"model": "ranker"}, "inputs": {"features": "features"}, "placement": "deployment"}
        return TritonModelNode.model_validate({**spec, **extra}).deployment_options("ranker")["ray_actor_options"]

    assert triton() == {"num_cpus": 0.25}
    assert triton(ray_actor_options={"num_gpus": 1}) == {"num_cpus": 0.25, "num_gpus": 1}
    assert triton(ray_actor_options={"num_cpus": 2}) == {"num_cpus": 2}
