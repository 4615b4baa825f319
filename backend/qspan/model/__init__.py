"""Typed records: the events that flow into the correlator and the spans it makes."""

from qspan import compiled

compiled.prefer("model", __path__)  # the mypyc build of these modules, if current (qspan/compiled.py)
