# The tracker's image: `journey worker` by default, `journey simulate` etc. too.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY stream ./stream
COPY agents ./agents
RUN pip install --no-cache-dir .
# Workers reach each other by container name; the web server listens on all interfaces.
ENV JOURNEY_WEB_BIND=0.0.0.0 \
    JOURNEY_WEB_HOST="" \
    JOURNEY_DATA_DIR=/data
EXPOSE 6066
ENTRYPOINT ["journey"]
CMD ["worker"]
