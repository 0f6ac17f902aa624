"""Telepath cli layer."""
