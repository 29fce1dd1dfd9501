# GPU image: docker build -t totalsegmentator .
# Run:       docker run --gpus 'device=0' --ipc=host -v /path/to/data:/tmp totalsegmentator \
#                TotalSegmentator -i /tmp/ct.nii.gz -o /tmp/seg
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    TOTALSEG_HOME_DIR=/opt/totalsegmentator

WORKDIR /opt/src
COPY pyproject.toml README.md LICENSE ./
COPY totalsegmentator ./totalsegmentator
RUN pip install --no-cache-dir . && mkdir -p /opt/totalsegmentator

WORKDIR /tmp
CMD ["TotalSegmentator", "--help"]
