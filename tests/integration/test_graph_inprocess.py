"""The declarative graphs in-process against the local stack (Feast, MLflow,
Triton on loopback): no Ray, except the notebook's last part, which runs the
same graph under Serve on the session's cluster."""
import asyncio

import pytest
import yaml

from apps.graph import args_from_config, in_process, parse_args
from deployments.errors import NotFound
from deployments.graph.validate import GraphSpecError
from local_stack.serve_configs import free_port

pytestmark = pytest.mark.integration
ITEMS = list(range(1, 11))


def graph_args(path: str, triton=None, app: str | None = None) -> dict:
    """The config's graph args (its first graph app's, or `app`'s) with the
    model nodes pointed at the test Triton and the LLM at a port nobody
    listens on (the chat app is not started here)."""
    with open(path) as handle:
        args = args_from_config(yaml.safe_load(handle), app)
    for node in args["graph"]["nodes"].values():
        if node["kind"] == "triton_model" and triton is not None:
            node["config"]["url"] = triton.grpc_url
        if node["kind"] == "llm":
            node["config"]["url"] = f"http://127.0.0.1:{free_port()}/v1"
    return args


def test_the_recommend_graph_ranks_like_onnxruntime_in_process(triton, stack):
    from mlflow import MlflowClient

    from tests.integration.test_recommend import expected_scores

    graph = in_process(graph_args("configs/local.yaml", triton))

    async def run():
        try:
            return await graph.run({"user_id": 7, "item_ids": ITEMS, "k": 3, "explain": False})
        finally:
            await graph.close()

    answer = asyncio.run(run())
    scores = expected_scores(stack, MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri), "champion", 7, ITEMS)
    best = sorted(range(len(ITEMS)), key=lambda i: -scores[i])[:3]
    assert [i["item_id"] for i in answer.output["items"]] == [ITEMS[i] for i in best]
    assert [i["score"] for i in answer.output["items"]] == pytest.approx([float(scores[i]) for i in best], rel=1e-5)
    assert answer.output["model"] == {"name": "ranker", "version": "1", "alias": "champion"}
    assert answer.routes == {"explanation": "default"} and answer.output["explanation"] is None
    assert {"features", "ranker", "ranking", "total"} <= set(answer.latency_ms)


def test_an_unreachable_llm_leaves_the_ranking_and_a_reason_then_cools_down(triton):
    """The explain node is soft with cooldown_s: 5. The first request waits for
    the LLM's failure; the next ones within 5 s skip it, saying why."""
    graph = in_process(graph_args("configs/local.yaml", triton))

    async def twice():
        try:
            return [await graph.run({"user_id": 7, "item_ids": ITEMS, "k": 3}) for _ in range(2)]
        finally:
            await graph.close()

    first, second = asyncio.run(twice())
    for answer in (first, second):
        assert len(answer.output["items"]) == 3 and answer.output["explanation"] is None
    assert first.errors["explain"].startswith("node explain failed: APIConnectionError")
    assert second.errors["explain"].startswith("skipped: explain failed ") and "APIConnectionError" in second.errors["explain"]
    assert "explain" in first.latency_ms and "explain" not in second.latency_ms


def test_a_rollout_runs_its_controller_in_process_too(triton, stack, tmp_path):
    """A notebook's graph with a rollout: the controller's loop runs on the
    caller's event loop, steps the canary up and moves the alias (on a copy
    of the registry)."""
    import random

    from tests.servers import registry_copy

    client, uri = registry_copy(stack, tmp_path, {"stable": "1", "canary": "2"})
    args = graph_args("configs/local.yaml", triton, app="canary")
    for node in args["graph"]["nodes"].values():
        if node["kind"] == "triton_model":
            node["config"].update(registry_uri=uri, alias_poll_s=0.5)
    (split,) = [step for step in args["graph"]["flow"]["steps"] if step["kind"] == "split"]
    split["rollout"].update(steps=[0.5, 1.0], dwell_s=0.5, min_requests=5, tick_s=0.2,
                            guards=[{"metric": "error_rate"}])
    graph = in_process(args)
    users = random.Random(0)

    async def until_promoted():
        answers, deadline = [], asyncio.get_running_loop().time() + 60
        rollout = graph.rollouts.controller.rollouts["ranker"]
        while rollout.state is None or rollout.state.status != "promoted":
            assert asyncio.get_running_loop().time() < deadline, rollout.status()
            answers.append(await graph.run({"user_id": users.randint(1, 200), "item_ids": ITEMS, "k": 3}))
        await graph.close()
        return answers

    answers = asyncio.run(until_promoted())
    assert str(client.get_model_version_by_alias("ranker", "stable").version) == "2"
    assert {a.routes["ranker"] for a in answers} == {"stable", "canary"}
    assert {(a.routes["ranker"], a.output["model"]["version"]) for a in answers} <= {("stable", "1"), ("canary", "2")}


def test_unknown_entities_are_a_404(triton):
    graph = in_process(graph_args("configs/local.yaml", triton))
    with pytest.raises(NotFound) as caught:
        asyncio.run(graph.run({"user_id": 999999, "item_ids": [1, 2], "explain": False}))
    assert caught.value.details == {"missing": {"user_id": [999999]}}


def test_the_ab_graph_is_sticky_names_the_version_and_shadows_the_ensemble(triton):
    graph = in_process(graph_args("configs/graphs/ab.yaml", triton))

    async def go():
        answers = {}
        for user in range(1, 21):
            answers[user] = [await graph.run({"user_id": user, "item_ids": ITEMS, "k": 3}) for _ in range(2)]
        await graph.close()
        return answers

    answers = asyncio.run(go())
    versions = {"champion": "1", "challenger": "2"}
    for first, again in answers.values():
        variant = first.routes["ab"]
        assert again.routes["ab"] == variant  # sticky
        assert first.output["model"] == {"name": "ranker", "version": versions[variant], "alias": variant}
        assert first.output["items"] == again.output["items"]
    assert {a[0].routes["ab"] for a in answers.values()} == {"champion", "challenger"}
    assert sum(graph.route_counts.values()) == 40
    counts = graph.shadows.counts["ranker"]
    assert (counts.mirrored, counts.compared, counts.failed) == (40, 40, 0)
    assert all(r.max_abs_diff is not None and r.max_abs_diff > 0 for r in graph.shadows.records)


def test_a_switch_on_a_feature_the_service_does_not_have_fails_the_build(stack):
    args = graph_args("configs/local.yaml")  # the build resolves aliases, calls no Triton
    args["graph"]["flow"]["steps"][3]["cases"][0]["when"] = {"field": "features.user_features__income[0]", "op": "gt", "value": 1}
    with pytest.raises(GraphSpecError) as caught:
        in_process(parse_args(args))
    assert [str(p) for p in caught.value.problems] == [
        "graph.flow.steps[3].cases[0].when.field: features has no field 'user_features__income' (it has "
        + str(sorted(_feature_names(stack)))
        + ")"
    ]


def test_a_switch_on_a_user_feature_routes_by_its_value(triton):
    args = graph_args("configs/local.yaml", triton)
    args["graph"]["flow"]["steps"][3]["cases"][0]["when"] = {"field": "features.user_features__age[0]", "op": "ge", "value": -1e9}
    answer = asyncio.run(in_process(args).run({"user_id": 7, "item_ids": ITEMS, "k": 1, "explain": False}))
    assert answer.routes == {"explanation": "cases[0]"}  # every age is >= -1e9, whatever request.explain says
    assert answer.errors["explain"].startswith("node explain failed: APIConnectionError")


def test_a_torch_node_refuses_an_onnx_only_version_clearly(stack):
    args = {
        "graph": {
            "name": "t",
            "request": {"user_id": {"type": "int"}, "item_ids": {"type": "list[int]"}},
            "nodes": {
                "features": {"kind": "feature_lookup", "inputs": {"user_id": "request.user_id", "item_id": "request.item_ids"}},
                "ranker": {"kind": "torch_model", "config": {"model": "ranker", "alias": "champion"}, "inputs": {"features": "features"}},
            },
            "flow": {"kind": "sequence", "steps": [{"kind": "node", "node": "features"}, {"kind": "node", "node": "ranker"}]},
            "output": {"scores": "ranker.scores"},
        }
    }
    from deployments.nodes.torch_model import NotATorchModel

    with pytest.raises(NotATorchModel, match=r"ranker version 1 \(@champion\) has no pytorch flavor \(flavors: onnx, python_function\)"):
        in_process(args)


def _feature_names(stack) -> list[str]:
    from deployments.nodes.feature_lookup import FeatureLookup, FeatureLookupConfig

    return FeatureLookup(FeatureLookupConfig()).feature_names


def test_the_prototype_notebook_runs_top_to_bottom(stack, ray_cluster, deployed, monkeypatch):
    """notebooks/prototype_graph.ipynb starts its own Triton, runs both graphs
    in-process, then the first under Serve on the session's cluster, stops it."""
    import nbformat
    from nbclient import NotebookClient

    from deployments.paths import PROJECT_ROOT

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    monkeypatch.setenv("SERVE_URL", deployed)
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "prototype_graph.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}).execute()
    outputs = {index: "".join(o.get("text", "") for o in cell.get("outputs", [])) for index, cell in enumerate(notebook.cells)}
    text = "\n".join(outputs.values())
    assert "flowchart TD" in text
    assert any(o.get("data", {}).get("image/png") for cell in notebook.cells for o in cell.get("outputs", []))
    assert '"model": {\n  "name": "ranker",\n  "version": "1",\n  "alias": "champion"\n }' in text
    assert "per variant:" in text and "failed=0" in text
    assert "under Serve: version 1 | same ranking as in-process: True" in text
    assert text.rstrip().endswith("Triton stopped: True")
