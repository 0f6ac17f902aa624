"""Telepath: a self-hostable SIP gateway that bridges phone calls to AI voice agents."""

__version__ = "0.1.0"
