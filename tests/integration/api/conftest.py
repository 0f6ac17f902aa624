"""The API fixtures live in ``tests/integration/conftest.py``; ``Api`` is re-exported here."""

from tests.integration.conftest import Api

__all__ = ["Api"]
