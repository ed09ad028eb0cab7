"""The benchmark's baseline: what a user writes without the platform.

One FastAPI app under uvicorn that calls the same Feast store and the same
Triton model directly (tritonclient gRPC aio), with no Ray in the path.

    BASELINE_TRITON=127.0.0.1:8101 uvicorn bench.baseline_app:app --port 8300
"""
import json
import os

import numpy as np
import tritonclient.grpc as grpcclient
from fastapi import FastAPI
from feast import FeatureStore
from mlflow import MlflowClient
from pydantic import BaseModel
from tritonclient.grpc import aio as triton_aio

ROOT = os.environ.get("BASELINE_STACK", ".local")
registry = MlflowClient(tracking_uri=f"sqlite:///{ROOT}/mlflow/mlflow.db", registry_uri=f"sqlite:///{ROOT}/mlflow/mlflow.db")
version = registry.get_model_version_by_alias("ranker", "champion")
columns = json.loads(version.tags["input_features"])
store = FeatureStore(repo_path=f"{ROOT}/feast")
service = store.get_feature_service("ranking")
app = FastAPI()
client = None


class Request(BaseModel):
    user_id: int
    item_ids: list[int]
    k: int = 10


@app.post("/recommend")
async def recommend(request: Request):
    global client
    if client is None:
        client = triton_aio.InferenceServerClient(os.environ["BASELINE_TRITON"])
    rows = [{"user_id": request.user_id, "item_id": item} for item in request.item_ids]
    features = store.get_online_features(features=service, entity_rows=rows, full_feature_names=True).to_dict()
    x = np.asarray([features[c] for c in columns], dtype=np.float32).T
    inputs = grpcclient.InferInput("features", list(x.shape), "FP32")
    inputs.set_data_from_numpy(x)
    result = await client.infer("ranker", [inputs], model_version=str(version.version), client_timeout=1.0)
    scores = result.as_numpy("score").reshape(-1)
    best = np.argsort(-scores, kind="stable")[: request.k]
    return {"items": [{"item_id": request.item_ids[i], "score": float(scores[i])} for i in best]}
