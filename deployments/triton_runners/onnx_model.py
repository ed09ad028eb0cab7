"""Triton python-backend runner for an ONNX artifact (copied as `model.py`).

A GPU (or CPU) Triton runs `model.onnx` with its native ONNX Runtime
backend. The Triton in the `nvidia-pytriton` wheel only has the python
backend, so the local repository pairs the same `model.onnx` with this file,
which runs it with onnxruntime. Every request of a dynamic batch is scored in
one `session.run`, as the native backend would.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        scores = self.session.run([self.output_name], {self.input_name: np.concatenate(batches)})[0]
        responses, start = [], 0
        for batch in batches:
            part = scores[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]))
        return responses
