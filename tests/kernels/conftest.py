"""Kernel-test fixtures (re-exported from kernel_helpers)."""

from kernel_helpers import backend  # noqa: F401
