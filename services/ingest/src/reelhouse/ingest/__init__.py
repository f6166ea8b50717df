"""The ingest service: SRT and RTMP servers encoders push into (docs/INGEST.md)."""
