"""Export helpers shared by the models and the refining post-processors."""

import torch


def is_exporting() -> bool:
    """Whether the current forward runs under ``torch.export`` / ONNX export / TorchScript tracing / compilation.

    Models take a static-graph path then (no data-dependent loops or branches); the result is the same.
    """
    return bool(
        torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
    )
