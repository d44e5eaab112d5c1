"""lynx-compile: a torch.compile backend for online N:M activation sparsity in Diffusion Transformers (RT-Lynx).

    import lynx_compile
    compiled = torch.compile(transformer, backend="lynx")
    lynx_compile.compile_repeated_blocks(transformer, options={"policy": policy})   # block by block (diffusers)
    print(lynx_compile.explain(transformer, **inputs))
"""

from . import ops  # noqa: F401  (registers the torch.ops.lynx custom ops)
from ._version import __version__
from .backend import lynx_backend, register
from .calibration import calibrate, fit_lora
from .checks import OptionError
from .config import LynxConfig, parse_options
from .explain import explain
from .lora import LoraAdapter
from .paths import measured
from .policy import LayerPolicy, Policy, PolicyError
from .regional import compile_repeated_blocks
from .regions import RegionError
from .steps import StepSchedule
from .trajectory import pipeline_sampler
from .report import LayerRecord, Report, collect_reports

register()

__all__ = ["LayerPolicy", "LayerRecord", "LoraAdapter", "LynxConfig", "OptionError", "Policy", "PolicyError",
           "RegionError", "Report", "StepSchedule", "__version__", "calibrate", "collect_reports",
           "compile_repeated_blocks", "explain", "fit_lora", "lynx_backend", "measured", "parse_options",
           "pipeline_sampler"]  # fmt: skip
