"""config.pbtxt is written by the platform and parses as Triton's ModelConfig."""
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from deployments.triton_repository import RUNNER, Target, TensorSpec, TritonModelSpec, export_version, render_config

SPEC = TritonModelSpec(
    name="ranker",
    inputs=[TensorSpec(name="features", dims=[12])],
    outputs=[TensorSpec(name="score", dims=[1])],
    max_batch_size=128,
    preferred_batch_sizes=[32, 64, 256],
    max_queue_delay_us=500,
    instance_count=2,
)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_gpu_target_uses_the_native_onnx_runtime_backend_on_gpus():
    config = parse(render_config(SPEC, Target.GPU))
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == ""
    assert config.default_model_filename == "model.onnx"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert config.instance_group[0].count == 2


def test_cpu_target_uses_the_native_backend_on_cpus():
    config = parse(render_config(SPEC, Target.CPU))
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_local_target_runs_the_same_onnx_in_the_python_backend():
    config = parse(render_config(SPEC, Target.CPU_PYTHON))
    assert config.backend == "python"
    assert config.platform == ""
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize("target", list(Target))
def test_batching_and_tensors(target):
    config = parse(render_config(SPEC, target))
    assert config.name == "ranker"
    assert config.max_batch_size == 128
    assert list(config.dynamic_batching.preferred_batch_size) == [32, 64]  # 256 > max_batch_size is dropped
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.HasField("version_policy") and config.version_policy.HasField("all")
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("features", model_config_pb2.TYPE_FP32, [12])
    (out,) = config.output
    assert (out.name, list(out.dims)) == ("score", [1])


def test_export_version_layout(tmp_path):
    onnx_file = tmp_path / "exported.onnx"
    onnx_file.write_bytes(b"onnx-bytes")
    repo = tmp_path / "repo"
    export_version(repo, SPEC, "3", onnx_file, Target.CPU_PYTHON)
    export_version(repo, SPEC, "4", onnx_file, Target.CPU_PYTHON)
    assert (repo / "ranker" / "3" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (repo / "ranker" / "4" / "model.py").read_text() == RUNNER.read_text()
    assert not (repo / "ranker" / "4" / "model.py").is_symlink()
    gpu_repo = tmp_path / "gpu"
    export_version(gpu_repo, SPEC, "3", onnx_file, Target.GPU)
    assert sorted(p.name for p in (gpu_repo / "ranker" / "3").iterdir()) == ["model.onnx"]


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="max_batch_size"):
        TritonModelSpec(name="m", inputs=SPEC.inputs, outputs=SPEC.outputs, max_batch_size=0)
    with pytest.raises(ValueError, match="name"):
        TritonModelSpec(name="bad name", inputs=SPEC.inputs, outputs=SPEC.outputs)
