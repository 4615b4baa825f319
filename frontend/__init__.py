"""The dashboard as package data: the server serves these files with importlib.resources (qspan/resources.py)."""
