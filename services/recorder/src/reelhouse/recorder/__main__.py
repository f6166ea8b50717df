"""`python -m reelhouse.recorder`."""

from reelhouse.recorder.main import main

main()
