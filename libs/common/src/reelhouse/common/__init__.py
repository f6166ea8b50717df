"""Reelhouse shared library.

Everything the services share lives here: settings, logging, the error tree, NATS subjects and the
bus helper, MongoDB access, contracts (pydantic models), the worker skeleton and node registry,
and (as they land) the FFmpeg command builder, supervisor and job leases.
"""

__version__ = "0.1.0"
