from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import Harness, running_relay


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_relay() as h:
        yield h
