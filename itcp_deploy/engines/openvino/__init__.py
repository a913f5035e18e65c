"""The openvino backend: build.py builds artifacts, runner.py loads and runs them."""
