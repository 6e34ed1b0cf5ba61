"""Market data sources; importing registers them."""
from src.data import csv_source, synthetic  # noqa: F401
