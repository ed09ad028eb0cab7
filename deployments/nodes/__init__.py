"""Node kinds: one module each (config, client, spec, node, input rules),
registered below with one line. The graph spec's node union, its input
checks and the builders all come from this tuple (deployments/nodes/base.py
says what a kind provides)."""
from deployments.nodes.aggregate import AggregateNode
from deployments.nodes.base import Node, NodeSpec
from deployments.nodes.feature_lookup import FeatureLookupNode
from deployments.nodes.llm import LLMNode
from deployments.nodes.outlier import OutlierNode
from deployments.nodes.python import PythonNode
from deployments.nodes.torch_model import TorchModelNode
from deployments.nodes.v2_model import TritonModelNode, V2ModelNode

KINDS: tuple[type[NodeSpec], ...] = (
    FeatureLookupNode,
    TritonModelNode,
    V2ModelNode,
    TorchModelNode,
    LLMNode,
    AggregateNode,
    OutlierNode,
    PythonNode,
)

__all__ = [
    "KINDS", "Node", "NodeSpec",
    "AggregateNode", "FeatureLookupNode", "LLMNode", "OutlierNode", "PythonNode", "TorchModelNode", "TritonModelNode", "V2ModelNode",
]
