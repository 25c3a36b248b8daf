import torch

from worldmodels.utils.profiling import nvtx_enabled, nvtx_range


def test_range_is_a_context_manager_and_a_decorator():
    calls = []

    @nvtx_range("work")
    def work(x):
        calls.append(x)
        return x * 2

    with nvtx_range("outer"):
        assert work(3) == 6
        assert work(4) == 8  # re-entering the same decorator instance is fine
    assert calls == [3, 4]


def test_exceptions_propagate_through_a_range():
    try:
        with nvtx_range("failing"):
            raise KeyError("x")
    except KeyError:
        pass
    else:
        raise AssertionError("the range swallowed the exception")


def test_disabled_without_cuda():
    assert nvtx_enabled() == torch.cuda.is_available()
