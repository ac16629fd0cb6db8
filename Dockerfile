# refacebids as a BIDS App container: docker build -t refacebids . && docker run --rm --network none -v /data:/data:ro -v /out:/out refacebids /data /out participant
FROM python:3.11-slim

LABEL org.opencontainers.image.title="refacebids" \
      org.opencontainers.image.description="BIDS App that replaces faces in head MRI with an average face, brain untouched" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/refacebids/refacebids"

# Nothing is fetched at run time: no telemetry, no TemplateFlow downloads.
ENV NIPYPE_NO_ET=1 \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    REFACEBIDS_CONTAINER_TYPE=docker \
    PIP_NO_CACHE_DIR=1

COPY . /tmp/refacebids
RUN pip install --no-cache-dir /tmp/refacebids \
    && rm -rf /tmp/refacebids \
    && useradd --create-home --uid 1000 refacebids

USER 1000
WORKDIR /home/refacebids
ENTRYPOINT ["refacebids"]
