# ferclean CLI image. Build: docker build -t ferclean .   Run: docker run --rm -v $PWD/out:/out ferclean curate --demo --out /out
FROM python:3.11-slim

# OpenCV and dlib wheels need these shared libraries at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ferclean ./ferclean
COPY flows ./flows
COPY data_contracts ./data_contracts
RUN pip install --no-cache-dir . \
 && useradd --create-home ferclean
USER ferclean
ENV FERCLEAN_NO_PROGRESS=1 \
    PREFECT_HOME=/tmp/prefect \
    MPLBACKEND=Agg
ENTRYPOINT ["ferclean"]
CMD ["--help"]
