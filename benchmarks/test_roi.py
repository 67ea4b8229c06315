import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("roi"))
def test_roi(benchmark, case, impl):
    bench_case(benchmark, case, impl)
