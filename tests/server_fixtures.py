"""A real qspan server in a subprocess (qspan.clirun.ServerProcess), for the server tests."""

from qspan.clirun import ServerProcess as Server, free_port  # noqa: F401
