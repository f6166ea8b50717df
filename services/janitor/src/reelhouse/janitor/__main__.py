"""`python -m reelhouse.janitor`."""

from reelhouse.janitor.main import main

main()
