"""`python -m reelhouse.restreamer`."""

from reelhouse.restreamer.main import main

main()
