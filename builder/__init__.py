"""ccbuild: measured-boot guest builder for confidential Kata Containers."""

__version__ = "0.1.0"
