"""Shared fixtures. Reference files live in ../shared/data beside the repository (CI has them)."""

from pathlib import Path

import pytest
import torch
from helpers import shared_file


@pytest.fixture
def tinyshakespeare() -> Path:
    return shared_file("tinyshakespeare.txt")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is far faster than two that stall
    each other; modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
