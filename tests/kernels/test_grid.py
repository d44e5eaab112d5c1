"""The host's grid arithmetic agrees with Triton's own (whose host calls cost microseconds from Triton 3.9 on)."""

import triton
from hypothesis import given
from hypothesis import strategies as st

from lynx_compile.kernels.grid import cdiv, next_power_of_2


@given(a=st.integers(0, 2**40), b=st.integers(1, 2**20))
def test_cdiv_is_tritons(a, b):
    assert cdiv(a, b) == triton.cdiv(a, b) and (cdiv(a, b) - 1) * b < a <= cdiv(a, b) * b


@given(n=st.integers(1, 2**40))
def test_next_power_of_2_is_tritons(n):
    power = next_power_of_2(n)
    assert power == triton.next_power_of_2(n) and power >= n > power // 2 and power & (power - 1) == 0
