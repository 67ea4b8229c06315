import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("conv_transpose2d"))
def test_conv_transpose2d(benchmark, case, impl):
    bench_case(benchmark, case, impl)
