import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("max_unpool2d"))
def test_max_unpool2d(benchmark, case, impl):
    bench_case(benchmark, case, impl)
