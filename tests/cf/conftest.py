"""Fixtures of tests/cf: the planted SplitData (see cf_testutils) and a CF config sized for it."""

import pytest

from cf_testutils import planted_split
from ckf_dist.config import CFConfig
from ckf_dist.data.table import SplitData


@pytest.fixture(scope="session")
def planted() -> SplitData:
    return planted_split()


@pytest.fixture
def small_cf() -> CFConfig:
    """A CF config sized for the planted data: small batches so an epoch has several steps."""
    return CFConfig(dim=16, epochs=80, patience=4, lr=0.02, batch_size=256, weight_decays=[1e-5, 1e-4, 1e-3])
