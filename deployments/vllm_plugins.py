"""vLLM plugins this project ships (entry point group `vllm.general_plugins`,
loaded by every vLLM process, engine workers included)."""


def init_cpu_amx() -> None:
    """Ask the kernel for AMX before vLLM's bf16 attention kernels run.

    On Intel CPUs with AMX, a first bf16 prompt of 4 tokens or fewer otherwise
    kills the engine with SIGILL: the kernel runs before the process requested
    the AMX tile state. Harmless elsewhere (AMD, no AMX): a no-op.
    """
    import torch

    init = getattr(torch.cpu, "_init_amx", None)
    if init is not None:
        init()
