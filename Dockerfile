# itcp-deploy with TensorRT 10 and ONNX Runtime GPU, for profiling and building engines on an NVIDIA GPU.
#   docker build -t itcp-deploy .
#   docker run --gpus all -v "$PWD:/work" itcp-deploy export cifar_resnet56 --input-shape 1x3x32x32 --out m.onnx
# The base image brings CUDA 13 and TensorRT 10 (Python 3.12); torch is the README's pin (2.14.1, a CUDA 13 build),
# from PyTorch's CUDA 13.0 wheels. Override BASE_IMAGE / TORCH_INDEX_URL together for another CUDA.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1

# Some TensorRT images ship the Python bindings as a setup script rather than installed.
RUN python3 -c "import tensorrt" 2>/dev/null || /opt/tensorrt/python/python_setup.sh

# torch first, from the CUDA index, so the project's "torch>=2.11" is already satisfied by the README's pin.
RUN python3 -m pip install "torch==2.14.1" "torchvision==0.29.1" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/itcp-deploy
COPY pyproject.toml README.md* ./
COPY itcp_deploy ./itcp_deploy

# onnxruntime (a core dependency) and onnxruntime-gpu (the [gpu] extra) install the same Python package;
# keep only the GPU build, which also runs on CPU.
RUN python3 -m pip install ".[tensorrt,gpu]" \
    && python3 -m pip uninstall -y onnxruntime onnxruntime-gpu \
    && python3 -m pip install --no-deps "onnxruntime-gpu>=1.18" \
    && itcp-deploy --help > /dev/null

WORKDIR /work
ENTRYPOINT ["itcp-deploy"]
CMD ["--help"]
