# Source on the device machine (Python 3.12, torch 2.11, CUDA 13, offline) from the repo root, with .whl
# carried (../shared/gpu/make_wheels.sh builds it): installs the XTuner stack beside the machine's torch
# (--target /tmp/site shadows its newer transformers), adds `python` (XTuner's launcher calls it), the
# `xtuner` command and this repo to the paths, and LMDeploy's Python package when it is in .whl.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_env.sh: wheel install failed" >&2; return 1; }
# a wrapper, not a symlink: a symlinked venv python outside its venv loses the venv's site-packages
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
[ -d .whl/lmdeploy-py ] && cp -r .whl/lmdeploy-py/lmdeploy /tmp/site/
export PATH=/tmp/bin:/tmp/site/bin:$PATH PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
