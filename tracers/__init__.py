"""The probe catalogue as package data: qspan reads these files with importlib.resources (qspan/resources.py)."""
