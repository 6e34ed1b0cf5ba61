"""Paper trading on a live (or replayed) feed with the backtest's kernel and rules.

feeds (closed bars) -> observe (the batch feature pipeline on the bars so far) -> the agent ->
broker (one env of the backtest kernel) -> journal (SQLite, one transaction per bar) -> parity
(the journal replayed through the backtester). ``session.paper_trade`` ties them together.
Coroutines are awaited methods named for what they do (``stream``, ``close``); every resource
that holds a connection or a file has a ``close()``.
"""
