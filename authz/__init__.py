"""Tollgate: an identity-aware access layer on Envoy's external authorization API."""

__version__ = "0.1.0"
