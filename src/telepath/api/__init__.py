"""Telepath api layer."""
