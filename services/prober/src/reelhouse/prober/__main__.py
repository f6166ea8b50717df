"""`python -m reelhouse.prober`."""

from reelhouse.prober.main import main

main()
