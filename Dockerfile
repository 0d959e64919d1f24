# bucket-mirror: the `mirror` command in a small, non-root image.
#   docker build -t bucket-mirror .
#   docker run --rm bucket-mirror --help
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mirror
COPY pyproject.toml README.md /src/
COPY mirror /src/mirror
RUN /opt/mirror/bin/pip install /src

FROM python:3.11-slim
COPY --from=build /opt/mirror /opt/mirror
# A fixed uid so volume ownership is predictable across hosts. The disk mount points exist in
# the image, owned by that user, so fresh named volumes mounted there are writable by it
# (bucket-mirror never creates a --disk folder itself).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/mirror --create-home mirror \
    && mkdir -p /data/disk-a /data/disk-b \
    && chown -R mirror:mirror /data
ENV PATH=/opt/mirror/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MIRROR_STATE_DIR=/var/lib/mirror/state
USER 10001:10001
WORKDIR /var/lib/mirror
EXPOSE 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["mirror"]
CMD ["--help"]
