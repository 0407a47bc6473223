"""Fixtures shared by the tests."""

from __future__ import annotations

import gc

import pytest

from tests.helpers import train


def pytest_addoption(parser):
    # tests/golden/README.md: re-record only for a change meant to change outputs
    parser.addoption(
        "--golden-record",
        action="store_true",
        help="rewrite tests/golden/ from today's code instead of comparing with it",
    )


@pytest.fixture
def runs(tmp_path):
    """train() with a fresh directory under tmp_path per call."""
    counter = iter(range(1_000_000))

    def _train(*overrides: str):
        return train(tmp_path / f"run{next(counter)}", *overrides)

    return _train


def pytest_collection_finish(session):
    # Collecting imported torch, matplotlib, pandas, Hydra and the rest: about 400,000 objects
    # that live to the end. Frozen, Python's full collections leave them out; what tests create
    # is still collected, by the thresholds set below.
    gc.collect()
    gc.freeze()


# The tests make millions of short-lived objects (OmegaConf nodes, matplotlib artists) and
# keep few: a young collection every 5,000 allocations instead of 700, and a full one after
# every 100 middle ones instead of 10.
gc.set_threshold(5000, 10, 100)
