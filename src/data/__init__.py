"""Market data sources; importing registers them."""

from src.data import ccxt_source, file_source, synthetic  # noqa: F401
