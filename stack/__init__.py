"""`fanout-local`: the whole system on one host, for development and demos."""
