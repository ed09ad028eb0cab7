"""The torch_model node loads a PyTorch model from an MLflow registry by alias
and runs it in the process; the answer names the version. The registry here is
a private SQLite one with a small network registered for the test."""
import asyncio
import json
import threading

import numpy as np
import pytest

from apps.graph import in_process
from deployments.nodes.torch_model import TorchModel, TorchModelConfig
from tests.graph_callables import graph_args, py, sequence


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """`scorer` version 1 (@champion): a linear layer + sigmoid on 3 inputs."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid()).eval()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("scorer", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(net, name="model", input_example=np.zeros((2, 3), dtype=np.float32), registered_model_name="scorer")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_model_version_tag("scorer", str(info.registered_model_version), "input_features", json.dumps(["a", "b", "c"]))
    client.set_registered_model_alias("scorer", "champion", str(info.registered_model_version))
    mlflow.set_tracking_uri("")
    return uri, net


def test_it_scores_like_the_registered_network(registry):
    import torch

    uri, net = registry
    model = TorchModel(TorchModelConfig(model="scorer", alias="champion", registry_uri=uri))
    batch = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    answer = asyncio.run(model.run({"features": batch}))
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).squeeze(1).numpy()
    assert answer["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert answer["model"] == {"name": "scorer", "version": "1", "alias": "champion"}
    assert model.input_features == ["a", "b", "c"]


def test_it_runs_as_a_graph_node(registry):
    uri, _ = registry
    nodes = {
        "rows": py("echo", value="request.rows"),
        "scorer": {"kind": "torch_model", "config": {"model": "scorer", "registry_uri": uri}, "inputs": {"features": "rows"}},
    }
    request = {"rows": {"type": "list[float]"}}
    args = graph_args(nodes, sequence("rows", "scorer"), {"scores": "scorer.scores", "model": "scorer.model"}, request)
    args["graph"]["nodes"]["rows"] = py("rows_of_three", values="request.rows")
    answer = asyncio.run(in_process(args).run({"rows": [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]}))
    assert len(answer.output["scores"]) == 2
    assert answer.output["model"]["version"] == "1"


def test_an_alias_the_registry_does_not_have_fails_at_build(registry):
    uri, _ = registry
    with pytest.raises(Exception, match="alias nightly not found"):
        TorchModel(TorchModelConfig(model="scorer", alias="nightly", registry_uri=uri))


def batched_scorer(uri):
    """A batching scorer whose forward passes are counted (rows each), the first held until released."""
    from deployments.nodes.batching import BatchConfig

    model = TorchModel(TorchModelConfig(model="scorer", registry_uri=uri), "scorer", BatchConfig(max_batch_size=64, max_wait_ms=1000))
    model.passes, model.first_pass_may_end = [], threading.Event()
    forward = model.infer

    def counted(rows, loaded=None):
        model.passes.append(len(rows))
        if len(model.passes) == 1:
            model.first_pass_may_end.wait(10)
        return forward(rows, loaded)

    model.infer = counted
    return model


async def while_the_first_pass_runs(model, first, others):
    """`first` alone, then `others` arriving while its forward pass runs in its thread."""
    head = asyncio.ensure_future(model.run({"features": first}))
    await asyncio.sleep(0)
    rest = asyncio.gather(*[model.run({"features": m}) for m in others], return_exceptions=True)
    await asyncio.sleep(0.05)
    model.first_pass_may_end.set()
    return [await head, *await rest]


def test_concurrent_requests_go_as_one_forward_pass_and_each_gets_its_own_scores(registry):
    uri, _ = registry
    model, alone = batched_scorer(uri), TorchModel(TorchModelConfig(model="scorer", registry_uri=uri))
    rng = np.random.default_rng(2)
    matrices = [rng.normal(size=(rows, 3)).astype(np.float32) for rows in (2, 4, 1, 3)]

    answers = asyncio.run(while_the_first_pass_runs(model, matrices[0], matrices[1:]))

    assert model.passes == [2, 8]  # alone; then 4 + 1 + 3 rows in one pass
    for answer, rows in zip(answers, matrices):
        assert answer["scores"] == pytest.approx(asyncio.run(alone.run({"features": rows}))["scores"], abs=1e-6)
        assert answer["model"]["version"] == "1"


def test_a_request_the_network_refuses_fails_alone_and_the_others_in_its_batch_answer(registry):
    uri, _ = registry
    model = batched_scorer(uri)
    good, refused = np.zeros((4, 3), dtype=np.float32), np.zeros((2, 5), dtype=np.float32)  # five features, not three

    first, before, failed, after = asyncio.run(while_the_first_pass_runs(model, good, [good, refused, good]))

    assert isinstance(failed, Exception) and "size" in str(failed), failed  # the network's shape guard, this request only
    assert len(first["scores"]) == len(before["scores"]) == len(after["scores"]) == 4
    assert model.passes == [4, 4, 2, 4]  # the batch could not be one pass: each request alone


def test_batch_is_taken_by_the_torch_node_in_a_graph_spec(registry):
    uri, _ = registry
    nodes = {
        "rows": py("rows_of_three", values="request.rows"),
        "scorer": {"kind": "torch_model", "config": {"model": "scorer", "registry_uri": uri}, "inputs": {"features": "rows"},
                   "batch": {"max_batch_size": 256, "max_wait_ms": 2}},
    }
    args = graph_args(nodes, sequence("rows", "scorer"), {"scores": "scorer.scores"}, {"rows": {"type": "list[float]"}})
    answer = asyncio.run(in_process(args).run({"rows": [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]}))
    assert len(answer.output["scores"]) == 2


def test_a_moved_alias_is_loaded_beside_the_serving_version_then_swapped_in(registry):
    """With alias_poll_s the node follows a moved alias: requests before the
    move score with version 1, after it with version 2, each answer's scores
    those of the version it names; an alias moved to a version that does not
    load is refused (the old one serves on, the reason in readiness)."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    uri, first = registry
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    torch.manual_seed(5)
    second = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid()).eval()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("scorer").experiment_id):
        info = mlflow.pytorch.log_model(second, name="model", input_example=np.zeros((2, 3), dtype=np.float32), registered_model_name="scorer")
    mlflow.set_tracking_uri("")
    v2 = str(info.registered_model_version)
    client.set_model_version_tag("scorer", v2, "input_features", json.dumps(["a", "b", "c"]))
    broken = client.create_model_version("scorer", source=f"{uri.removeprefix('sqlite:///').rsplit('/', 1)[0]}/missing").version
    client.set_registered_model_alias("scorer", "moving", "1")
    batch = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)

    def expected(net):
        with torch.no_grad():
            return net(torch.from_numpy(batch)).squeeze(1).tolist()

    async def follow():
        model = TorchModel(TorchModelConfig(model="scorer", alias="moving", registry_uri=uri, alias_poll_s=0.05))
        answers = [await model.run({"features": batch})]
        client.set_registered_model_alias("scorer", "moving", v2)
        for _ in range(200):
            answers.append(await model.run({"features": batch}))
            if answers[-1]["model"]["version"] == v2:
                break
            await asyncio.sleep(0.05)
        client.set_registered_model_alias("scorer", "moving", str(broken))
        for _ in range(200):
            ready, detail = await model.ready()
            if "does not load" in detail:
                break
            await asyncio.sleep(0.05)
        answers.append(await model.run({"features": batch}))
        await model.close()
        return answers, ready, detail

    answers, ready, detail = asyncio.run(follow())
    client.delete_registered_model_alias("scorer", "moving")
    for answer in answers:
        net = first if answer["model"]["version"] == "1" else second
        assert answer["scores"] == pytest.approx(expected(net), abs=1e-6)
    assert answers[0]["model"]["version"] == "1" and answers[-2]["model"]["version"] == v2
    assert answers[-1]["model"]["version"] == v2  # the broken version refused: v2 serves on
    assert ready and f"points to version {broken}, which does not load" in detail and f"still serving version {v2}" in detail
