import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as on the shared 2-core machines (results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
