"""The family tests run torch on one thread: Captum's many small backward passes and the server's
onnxruntime sessions otherwise oversubscribe the cores (twenty times slower on a shared 2-core machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
