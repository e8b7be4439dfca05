"""Research harnesses on top of the library: the paper comparison and its presets, the probe tasks,
the quickstart and the demo corpus. The library never imports them."""
