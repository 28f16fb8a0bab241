# edgeqa images, one per environment (docs/environments.md). The default (last) target is the slim
# CPU runtime: the edgeqa wheel with the serve extra — onnxruntime, tokenizers, numpy, typer,
# starlette, uvicorn, prometheus-client; no torch, no benchmark harness — run as a non-root user,
# with the artifact mounted at /model. `train` carries the training stack on transformers 5.x,
# `export` Optimum's stack (transformers 4.57); the checkpoint folder passes from one to the other.
#
#   docker build --target runtime -t edgeqa .
#   docker run --rm -v ./model:/model edgeqa ask /model "What is the capital of France?"
#   docker run --rm -p 8080:8080 -v ./model:/model edgeqa serve /model --host 0.0.0.0 --api-key-file /model/key
#   docker build --target train -t edgeqa-train .
#   docker run --rm --gpus all -v $PWD:/work edgeqa-train finetune --data qa.jsonl -o runs/qa
#   docker build --target export -t edgeqa-export .
#   docker run --rm -v $PWD:/work edgeqa-export export runs/qa/final model-int8 --quantize
#
# BASE is an ARG so that the image can be built from a locally made Python base where no
# registry is reachable (see README, "Docker"). TORCH names torch's build; TORCH_INDEX, where set,
# is the index it comes from (https://download.pytorch.org/whl/cpu for the CPU build).
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

# The train extra alone: with the export extra beside it, Optimum's pin would hold transformers at
# 4.57. TRANSFORMERS is named so that pip fails rather than resolve to an older line.
FROM ${BASE} AS train
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=
ARG TRANSFORMERS="transformers>=5,<6"
COPY --from=wheel /dist /dist
RUN python3 -m venv /opt/edgeqa \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH}" \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q "$(ls /dist/edgeqa-*.whl)[train]" "${TRANSFORMERS}" \
    && rm -rf /dist
ENV PATH=/opt/edgeqa/bin:$PATH HF_HOME=/cache/huggingface
WORKDIR /work
ENTRYPOINT ["edgeqa"]
CMD ["--help"]

# Optimum's stack for `edgeqa export` (and `edgeqa parity`); a CPU is enough.
FROM ${BASE} AS export
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=
COPY --from=wheel /dist /dist
RUN python3 -m venv /opt/edgeqa \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH}" \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q "$(ls /dist/edgeqa-*.whl)[export]" \
    && rm -rf /dist
ENV PATH=/opt/edgeqa/bin:$PATH HF_HOME=/cache/huggingface
WORKDIR /work
ENTRYPOINT ["edgeqa"]
CMD ["--help"]

FROM ${BASE} AS runtime
COPY --from=wheel /dist /dist
# The wheel's benchmark harness (edgeqa.bench) is left out: the image answers, it does not measure.
RUN python3 -m venv /opt/edgeqa \
    && /opt/edgeqa/bin/pip install --no-cache-dir -q "$(ls /dist/edgeqa-*.whl)[serve]" \
    && rm -rf /opt/edgeqa/lib/python3*/site-packages/edgeqa/bench \
    && rm -rf /dist /opt/edgeqa/lib/python3*/site-packages/pip /opt/edgeqa/lib/python3*/site-packages/pip-* \
    && useradd --create-home --uid 10001 edgeqa
USER edgeqa
ENV PATH=/opt/edgeqa/bin:$PATH PYTHONDONTWRITEBYTECODE=1
VOLUME /model
EXPOSE 8080
ENTRYPOINT ["edgeqa"]
CMD ["--help"]
