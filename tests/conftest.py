import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Celo / Celo-Adam read their released weights from here (never copied into the project)
_CELO_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "celo"
if _CELO_DIR.is_dir():
    os.environ.setdefault("OPTFIT_CELO_DIR", str(_CELO_DIR.resolve()))


def pytest_collection_modifyitems(config, items):
    """Skip tests parametrised by an optimizer ``name`` whose class reports it cannot be built here
    (``cls.unavailable_reason()``: learned optimizers whose weight files are absent)."""
    import optfit

    reasons: dict[str, str | None] = {}
    for item in items:
        name = getattr(getattr(item, "callspec", None), "params", {}).get("name")
        if not isinstance(name, str) or name not in optfit.list_optimizers():
            continue
        if name not in reasons:
            check = getattr(optfit.optimizer_info(name).cls, "unavailable_reason", None)
            reasons[name] = check() if check else None
        if reasons[name]:
            item.add_marker(pytest.mark.skip(reason=reasons[name]))


@pytest.fixture(autouse=True)
def _seeded_rngs():
    """Every test starts from the same global RNG state, whatever ran before it (an unseeded draw must not make a
    test pass or fail by the order of the suite)."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
