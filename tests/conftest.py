"""Shared test setup. Without a GPU, Triton kernels run through the interpreter, which must be chosen before the
kernels are decorated, so the variable is set here, before anything imports lynx_compile."""

import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The speed rule's measurements persist on disk; tests keep theirs to themselves, whatever the user's cache holds.
os.environ["LYNX_CACHE_DIR"] = tempfile.mkdtemp(prefix="lynx-test-cache-")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=60, derandomize=False, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _fresh_state():
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
