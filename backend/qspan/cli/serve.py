"""qspan serve: the live dashboard."""

from __future__ import annotations

from pathlib import Path

from qspan import program
from qspan.cli.common import name_value


def add_server_options(s) -> None:
    """What the server takes: shared by `qspan serve` and `qspan-lab demo`."""
    s.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s; others need --token)")
    s.add_argument("--port", type=int, default=8321, help="listen port (default %(default)s)")
    s.add_argument("--token", default="", help="bearer token required by the API (and ?token= for the WebSocket)")
    s.add_argument("--sampling", default="auto", choices=("auto", "off"),
                   help="auto (default): when the server falls behind, trace fewer "
                        f"{program.WINDOW_MS} ms windows, each whole; off: trace everything, lose events when behind")
    s.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept the live WebSocket from pages of this origin (scheme://host:port; repeatable)")
    s.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM; with --tls-key)")
    s.add_argument("--tls-key", type=Path, help="... and this private key (PEM)")
    s.add_argument("--record-dir", type=Path, default=Path("/tmp/qspan-sessions"),
                   help="where each session's raw recording goes (default %(default)s)")
    s.add_argument("--record-max-mb", type=int, default=2048,
                   help="stop each session's raw recording at this size; tracing goes on (0: no limit; default %(default)s)")
    s.add_argument("--record-total-mb", type=int, default=8192,
                   help="all sessions' recordings together: the oldest finished ones are removed to make room for a "
                        "new one (0: no limit; default %(default)s)")
    s.add_argument("--follow-all", action="store_true",
                   help="trace every QEMU on the host, ones started later too (a user's detach is kept)")
    s.add_argument("--otlp-endpoint", metavar="URL",
                   help="also send every live session's spans to this OpenTelemetry collector (OTLP/HTTP traces, "
                        "e.g. http://127.0.0.1:4318/v1/traces); one trace per guest request")
    s.add_argument("--otlp-header", action="append", default=[], metavar="NAME=VALUE",
                   help="an HTTP header for the collector, e.g. Authorization=... (repeatable)")
    s.add_argument("--record-keep-free-mb", type=int, default=1024,
                   help="a recording stops growing when its filesystem has less than this free; tracing goes on "
                        "(0: never; default %(default)s)")


def settings_from(args):
    """The server's Settings from add_server_options' arguments, checked (QspanError if unsafe)."""
    from qspan.server.settings import Settings

    settings = Settings(host=args.host, port=args.port, token=args.token or None, sampling=args.sampling,
                        record_dir=args.record_dir, record_max_mb=args.record_max_mb,
                        record_total_mb=args.record_total_mb,
                        record_keep_free_mb=args.record_keep_free_mb, extra_origins=tuple(args.allow_origin),
                        tls_cert=args.tls_cert, tls_key=args.tls_key, otlp_endpoint=args.otlp_endpoint,
                        follow_all=args.follow_all,
                        otlp_headers=tuple(name_value(h, "--otlp-header") for h in args.otlp_header))
    settings.check()
    return settings


def cmd_serve(args) -> int:
    from qspan.server.run import serve

    serve(settings_from(args), recordings=tuple(args.open))
    return 0


def add(sub, parents) -> None:
    s = sub.add_parser("serve", help="serve the live dashboard (FastAPI) on 127.0.0.1")
    add_server_options(s)
    s.add_argument("--open", action="append", default=[], type=Path, metavar="RECORDING",
                   help="replay this recording into a session of its own, kept while the server runs: a trace taken "
                        "elsewhere, looked at here (repeatable)")
    s.set_defaults(fn=cmd_serve)
