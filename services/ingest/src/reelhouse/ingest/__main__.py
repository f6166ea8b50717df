"""`python -m reelhouse.ingest`."""

from reelhouse.ingest.main import main

main()
