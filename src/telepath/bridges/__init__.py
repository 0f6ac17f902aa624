"""Telepath bridges layer."""
