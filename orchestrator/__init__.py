"""Build daemon that keeps a hierarchy of container base images up to date."""

__version__ = "0.1.0"
