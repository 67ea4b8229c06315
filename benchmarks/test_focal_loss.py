import pytest

from conftest import bench_case, params


@pytest.mark.parametrize("case,impl", params("focal_loss"))
def test_focal_loss(benchmark, case, impl):
    bench_case(benchmark, case, impl)
