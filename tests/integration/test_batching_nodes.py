"""Batching across requests on the real backends (the session's Feast on
SQLite and Triton): concurrent requests of one process merged into one
backend call, each answered with exactly what it would get alone."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from deployments.errors import BackendTimeout, BackendUnavailable, NotFound
from deployments.nodes.feature_lookup import FeatureLookupConfig, FeatureLookupNode
from deployments.nodes.v2_model import V2ModelConfig, TritonModelNode

pytestmark = pytest.mark.integration

BATCH = {"max_batch_size": 256, "max_wait_ms": 1000}
UNKNOWN_USER = 999_999


def features_node(stack, batch=BATCH):
    return FeatureLookupNode(kind="feature_lookup", config=FeatureLookupConfig(repo_path=str(stack.feast_repo)),
                             inputs={"user_id": "request.user_id", "item_id": "request.item_ids"}, batch=batch)


def ranker_node(stack, triton, batch=BATCH):
    return TritonModelNode(kind="triton_model", config=V2ModelConfig(url=triton.grpc_url, registry_uri=stack.mlflow_uri),
                           inputs={"features": "features"}, batch=batch)


def counting(node, method: str, slower_s: float = 0.0):
    """Record the arguments of every call of `node.<method>`; with `slower_s`,
    each call first waits that long (a store slower than the local file, so
    that requests surely arrive while the node is busy)."""
    calls, original = [], getattr(node, method)

    async def recorded(*args):
        calls.append(args)
        await asyncio.sleep(slower_s)
        return await original(*args)

    setattr(node, method, recorded)
    return calls


def test_feature_lookups_of_concurrent_requests_are_one_read_with_each_entity_read_once(stack):
    batched = features_node(stack).build("features")
    alone = features_node(stack, batch=None).build("features")
    reads = counting(batched.lookup, "lookup", slower_s=0.05)
    store_reads = []
    online_read = batched.lookup.provider.online_read
    batched.lookup.provider.online_read = lambda config, view, keys, features: (
        store_reads.append((view.name, len(keys))) or online_read(config, view, keys, features))
    requests = [{"user_id": 7, "item_id": [1, 2, 3]}, {"user_id": 7, "item_id": [3, 4]}, {"user_id": 8, "item_id": [1]}]

    async def scenario():
        busy = asyncio.ensure_future(batched.run({"user_id": 9, "item_id": [5]}))  # the node is busy...
        await asyncio.sleep(0)
        together = await asyncio.gather(*[batched.run(r) for r in requests])  # ...so these gather
        await busy
        return together, [await alone.run(r) for r in requests]

    together, separately = asyncio.run(scenario())
    assert len(reads) == 2  # the first request alone, then the three as one read
    assert sorted(store_reads[2:]) == [("item_features", 4), ("user_features", 2)]  # items 1-4 and users 7, 8, each once
    for mine, theirs in zip(together, separately):
        assert mine.values == theirs.values and mine.timestamps == theirs.timestamps


def test_an_unknown_user_in_a_batch_is_a_404_for_that_request_only(stack):
    node = features_node(stack).build("features")
    reads = counting(node.lookup, "lookup", slower_s=0.05)

    async def scenario():
        busy = asyncio.ensure_future(node.run({"user_id": 9, "item_id": [5]}))
        await asyncio.sleep(0)
        results = await asyncio.gather(node.run({"user_id": 7, "item_id": [1, 2]}),
                                       node.run({"user_id": UNKNOWN_USER, "item_id": [1]}),
                                       node.run({"user_id": 8, "item_id": [2]}), return_exceptions=True)
        await busy
        return results

    first, unknown, last = asyncio.run(scenario())
    assert len(reads) == 2  # the three were one read
    assert isinstance(unknown, NotFound) and unknown.details["missing"] == {"user_id": [UNKNOWN_USER]}
    assert not first.missing and not last.missing


def test_model_calls_of_concurrent_requests_are_one_triton_call_with_the_same_scores(stack, triton):
    batched = ranker_node(stack, triton).build("ranker")
    alone = ranker_node(stack, triton, batch=None).build("ranker")
    calls = counting(batched.model, "infer")
    rng = np.random.default_rng(0)
    matrices = [rng.random((rows, 12), dtype=np.float32) for rows in (3, 10, 1, 7)]

    async def scenario():
        try:
            busy = asyncio.ensure_future(batched.run({"features": matrices[0]}))
            await asyncio.sleep(0)
            together = await asyncio.gather(*[batched.run({"features": m}) for m in matrices[1:]])
            await busy
            return together, [await alone.run({"features": m}) for m in matrices[1:]]
        finally:
            await batched.close()
            await alone.close()

    together, separately = asyncio.run(scenario())
    assert [len(call[0]) for call in calls] == [3, 18]  # alone, then 10 + 1 + 7 rows in one call
    for mine, theirs in zip(together, separately):
        np.testing.assert_allclose(mine["scores"], theirs["scores"], rtol=1e-6)
        assert mine["model"] == theirs["model"]


def test_a_request_triton_refuses_fails_alone_and_the_others_in_its_batch_answer(stack, triton):
    node = ranker_node(stack, triton).build("ranker")
    good, bad = np.zeros((4, 12), dtype=np.float32), np.zeros((2, 5), dtype=np.float32)  # 5 features, not 12

    async def scenario():
        try:
            busy = asyncio.ensure_future(node.run({"features": good}))
            await asyncio.sleep(0)
            results = await asyncio.gather(node.run({"features": good}), node.run({"features": bad}),
                                           node.run({"features": good}), return_exceptions=True)
            await busy
            return results
        finally:
            await node.close()

    first, refused, last = asyncio.run(scenario())
    assert isinstance(refused, BackendUnavailable), refused
    assert len(first["scores"]) == 4 and len(last["scores"]) == 4


def test_requests_batched_behind_a_frozen_triton_fail_with_backend_timeout_within_their_own_timeout(stack, triton):
    """Triton accepts connections but never answers (SIGSTOP): the call in
    flight times out after `timeout_s`, and the requests that gathered behind
    it fail with the same 503-class error `timeout_s` after they arrived, not
    nearly twice that (the rest of the stalled call's timeout, then their own
    batch's)."""
    timeout_s = 1.0
    node = TritonModelNode(kind="triton_model", inputs={"features": "features"}, batch=BATCH,
                           config=V2ModelConfig(url=triton.grpc_url, registry_uri=stack.mlflow_uri, timeout_s=timeout_s)).build("ranker")
    rows = np.zeros((4, 12), dtype=np.float32)

    async def timed(delay_s):
        await asyncio.sleep(delay_s)
        started = time.monotonic()
        try:
            await node.run({"features": rows})
        except BackendTimeout as error:
            return error, time.monotonic() - started
        return None, time.monotonic() - started

    async def scenario():
        try:
            await node.run({"features": rows})  # connected and warm before the freeze
            os.kill(triton.process.pid, signal.SIGSTOP)
            try:
                return await asyncio.gather(timed(0.0), timed(0.1), timed(0.1), timed(0.2))
            finally:
                os.kill(triton.process.pid, signal.SIGCONT)
        finally:
            await node.close()

    outcomes = asyncio.run(scenario())
    for error, elapsed_s in outcomes:
        assert isinstance(error, BackendTimeout), (error, elapsed_s)
        assert (error.status, error.code, error.details) == (503, "backend_timeout", {"backend": "triton", "timeout_s": timeout_s})
        assert elapsed_s < timeout_s + 0.5, outcomes  # not the 1.8-1.9 s of two timeouts in a row


def test_a_batch_larger_than_the_model_takes_is_refused_when_the_node_is_built(stack, triton):
    with pytest.raises(ValueError, match=r"graph.nodes.ranker.batch.max_batch_size: 1000 rows, but ranker on Triton takes at most 256"):
        ranker_node(stack, triton, batch={"max_batch_size": 1000}).build("ranker")
