"""The daemon's web page: see server.py (routes), board.py (live states), source.py
(what it reads from the daemon), access.py (who may act)."""
