"""Real servers for the origin tests: registries, moto S3 (see tests/fixtures)."""

from tests.fixtures.registry import (  # noqa: F401
    registry,
    registry_basic,
    registry_bearer,
    token_signing_key,
)
from tests.fixtures.s3 import s3_server  # noqa: F401
