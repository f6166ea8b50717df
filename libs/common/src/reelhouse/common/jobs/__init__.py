"""Job ownership shared by the recorder and the restreamer."""
