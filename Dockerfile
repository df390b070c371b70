# The blog: the publishing pipeline and serve.py, run by /run.sh.
#   docker build -t srcco-de:1 .                                   (with a registry)
#   pequod-agent --build-image srcco-de:1                          (without: local Debian stand-in base)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# git is needed by GitPython; the stand-in base has it, the official python images do not. The mount points of
# the volumes exist with the owners their volumes start with where a runtime copies them up (podman): the
# publisher's /workdir/build, the builder's /builder (the agent makes each volume's root its owner's itself).
RUN set -eux; \
    if ! command -v git >/dev/null; then \
        apt-get update; apt-get install -y --no-install-recommends git ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --home-dir /workdir --no-create-home --shell /usr/sbin/nologin site; \
    mkdir -m 1777 /workdir /builder; \
    install -d -o 10001 -g 10001 -m 0755 /workdir/build

# Dependencies first, so that code changes do not reinstall them: pyproject.toml's core list and its
# `blog` extra, nothing of the host agent's (docs/deployables.md).
COPY pyproject.toml /src/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
                print("\n".join(p["dependencies"] + p["optional-dependencies"]["blog"]))' \
        > /src/requirements.txt; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt
# The blog's code only: the agent (container/) runs on the host, so its entry point goes too.
COPY README.md /src/
COPY pipeline /src/pipeline
COPY serve.py /src/
RUN set -eux; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /src; \
    rm -rf /src /opt/venv/bin/pequod-agent; \
    /opt/venv/bin/python -m compileall -q /opt/venv/lib >/dev/null || true

COPY run.sh serve.py pequod.xml /
LABEL org.pequod.manifest="/pequod.xml"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/workdir \
    DATA_DIR=/workdir \
    PORT=8000
USER 10001
WORKDIR /workdir
EXPOSE 8000
# The manifest's health check path, for Docker's own health state (the agent times it from the manifest). It
# runs every 10 s in every instance, so it is lean: bash's own /dev/tcp and one status line (0.3 MiB and 3 ms
# of CPU; Python's urllib.request took 8.4 MiB and 45 ms).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/localhost/${PORT:-8000} && printf 'GET /_site/health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 3 line <&3 && [[ $line == HTTP/*' 200 '* ]]"]
CMD ["/run.sh"]
