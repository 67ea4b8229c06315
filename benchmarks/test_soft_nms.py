import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("soft_nms"))
def test_soft_nms(benchmark, case, impl):
    bench_case(benchmark, case, impl)
