# edgeqa images. The default (last) target is the slim CPU runtime: the edgeqa wheel with the
# serve extra — onnxruntime, tokenizers, numpy, typer, starlette, uvicorn, prometheus-client; no
# torch — run as a non-root user, with the artifact mounted at /model. The `train` target carries
# the training and export stack.
#
#   docker build --target runtime -t edgeqa .
#   docker run --rm -v ./model:/model edgeqa ask /model "What is the capital of France?"
#   docker run --rm -p 8080:8080 -v ./model:/model edgeqa serve /model --host 0.0.0.0 --api-key-file /model/key
#   docker build --target train -t edgeqa-train .
#
# BASE is an ARG so that the image can be built from a locally made Python base where no
# registry is reachable (see README, "Docker").
ARG BASE=python:3.11-slim

FROM ${BASE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY edgeqa edgeqa
COPY finetune finetune
COPY export export
COPY runtime runtime
COPY benchmarks benchmarks
COPY serve serve
COPY documents documents
RUN python3 -m venv /build && /build/bin/pip install --no-cache-dir -q --upgrade pip \
    && /build/bin/pip wheel --no-cache-dir --no-deps -w /dist .

FROM ${BASE} AS train
ARG TORCH=torch==2.13.0
COPY --from=wheel /dist /dist
RUN python3 -m venv /opt/edgeqa \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q "${TORCH}" \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q "$(ls /dist/edgeqa-*.whl)[all]" \
    && rm -rf /dist
ENV PATH=/opt/edgeqa/bin:$PATH HF_HOME=/cache/huggingface
WORKDIR /work
ENTRYPOINT ["edgeqa"]
CMD ["--help"]

FROM ${BASE} AS runtime
COPY --from=wheel /dist /dist
RUN python3 -m venv /opt/edgeqa \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q "$(ls /dist/edgeqa-*.whl)[serve]" \
    && rm -rf /dist /opt/edgeqa/lib/python3*/site-packages/pip /opt/edgeqa/lib/python3*/site-packages/pip-* \
    && useradd --create-home --uid 10001 edgeqa
USER edgeqa
ENV PATH=/opt/edgeqa/bin:$PATH PYTHONDONTWRITEBYTECODE=1
VOLUME /model
EXPOSE 8080
ENTRYPOINT ["edgeqa"]
CMD ["--help"]
