# qspan in a container, tracing QEMUs on the host (see docker-compose.yml).
# The image holds bpftrace and qspan; QEMU stays on the host. Build from the repo root:
#   docker build -t qspan .
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bpftrace python3 python3-venv procps ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/qspan
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY tracers ./tracers
COPY frontend ./frontend
# a plain (non-editable) install: the catalogue and the dashboard ship inside the wheel.
# The correlator runs pure Python here (no compiler in the image): `python -m qspan.compiled
# build` in an image with gcc, python3-dev and the 'compiled' extra would make it ~2x faster.
RUN python3 -m venv /opt/qspan/.venv && /opt/qspan/.venv/bin/pip install --no-cache-dir .[otlp]
ENV PATH=/opt/qspan/.venv/bin:$PATH
# Inside the container's own network namespace 0.0.0.0 is how the published port reaches
# qspan: compose publishes it on the host's 127.0.0.1 only, and a token is still required.
EXPOSE 8321
ENTRYPOINT ["qspan"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8321"]
