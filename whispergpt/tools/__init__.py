"""Tools built on the library: the demo corpus, the quickstart, the paper comparison."""
