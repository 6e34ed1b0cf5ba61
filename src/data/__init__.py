"""Market data sources (ccxt, files, synthetic); ``src.registry`` imports them for a lookup."""
