"""lynx-compile: a torch.compile backend for online N:M activation sparsity in Diffusion Transformers (RT-Lynx).

    import lynx_compile
    compiled = torch.compile(transformer, backend="lynx")
    print(lynx_compile.explain(transformer, **inputs))
"""

from . import ops  # noqa: F401  (registers the torch.ops.lynx custom ops)
from .backend import lynx_backend, register
from .config import LynxConfig, parse_options
from .explain import explain
from .lora import LoraAdapter, fit_lora
from .policy import LayerPolicy, Policy, calibrate
from .report import LayerRecord, Report, collect_reports

__version__ = "0.1.0"

register()

__all__ = ["LayerPolicy", "LayerRecord", "LoraAdapter", "LynxConfig", "Policy", "Report", "calibrate",
           "collect_reports", "explain", "fit_lora", "lynx_backend", "parse_options"]  # fmt: skip
