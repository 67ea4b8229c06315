import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("boxes"))
def test_boxes(benchmark, case, impl):
    bench_case(benchmark, case, impl)
