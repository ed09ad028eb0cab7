"""Payload logging: each graph request, its answer, chosen nodes' outputs,
the model versions and routes taken, as CloudEvents to a sink, sampled,
off the request path (deployments/payloads/logger.py)."""
from deployments.payloads.config import FileSink, HttpSink, PayloadLogConfig, RedisSink
from deployments.payloads.logger import PayloadLogger

__all__ = ["FileSink", "HttpSink", "PayloadLogConfig", "PayloadLogger", "RedisSink"]
