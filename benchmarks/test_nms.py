import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("nms"))
def test_nms(benchmark, case, impl):
    bench_case(benchmark, case, impl)
