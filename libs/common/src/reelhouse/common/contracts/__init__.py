"""Contracts: pydantic models for API bodies, bus messages and stored documents."""
