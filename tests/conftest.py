"""Shared pytest configuration."""

import os

import pytest

if os.environ.get("CI") and not os.path.exists("/dev/fuse"):
    raise pytest.UsageError("CI must run the FUSE tests: /dev/fuse is missing")
