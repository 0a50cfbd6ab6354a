# Sourced by the GPU scripts: the bench's one dependency that a bare GPU image may lack is
# pytorch-optimizer (SophiaH, ADOPT, SPAM, StableAdamW; pure Python, needs only torch and
# numpy). Without it, install its wheel from .whl/ when one was carried there:
#     python3 -m pip download --no-deps pytorch-optimizer==4.1.0 -d .whl
python3 -c "import pytorch_optimizer" 2>/dev/null || {
  ls .whl/pytorch_optimizer-*.whl > /dev/null 2>&1 || {
    echo "pytorch-optimizer is missing and .whl/ holds no wheel of it:" \
         "python3 -m pip download --no-deps pytorch-optimizer==4.1.0 -d .whl" >&2
    exit 2
  }
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pytorch_optimizer-*.whl \
    || exit 2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
}
