# GPU image: docker build -t totalsegmentator .
# Run:       docker run --gpus 'device=0' --ipc=host -v /path/to/data:/tmp totalsegmentator \
#                TotalSegmentator -i /tmp/ct.nii.gz -o /tmp/seg
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    TOTALSEG_HOME_DIR=/opt/totalsegmentator

WORKDIR /opt/src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY totalsegmentator ./totalsegmentator
# gcc only to build the optional C extensions (the mask writer's loops, the order-1 zoom, the instance norm), then
# removed
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y --auto-remove gcc && rm -rf /var/lib/apt/lists/* \
    && (cd / && python -c "import totalsegmentator.io._maskcodec, totalsegmentator.preprocessing._linear_zoom, \
totalsegmentator.inference._instance_norm") \
    && mkdir -p /opt/totalsegmentator

WORKDIR /tmp
CMD ["TotalSegmentator", "--help"]
