"""Shared fixtures. Reference files live in ../shared/data beside the repository (CI has them)."""

from pathlib import Path

import pytest
import torch
from helpers import shared_file
from hypothesis import settings

# The fuzz tests draw the same inputs on every run ("ci", the default), so that whether a commit
# passes does not depend on the draw; `pytest --hypothesis-profile explore` draws new ones (run it
# when changing a parser or a file reader, and pin what it finds with @example).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("ci")


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
