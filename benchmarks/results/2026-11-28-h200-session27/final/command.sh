python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONUNBUFFERED=1 LYNX_BUILD_DIR=$PWD/.lynx_cache/cutlass LYNX_CACHE_DIR=/tmp/lynx_measure || exit
ROOT=$PWD
(cd .dbg/s27/base && PYTHONPATH=/tmp/site:$PWD timeout 100 python -m pytest -q -rf -p no:cacheprovider tests/test_regional.py -k "graph_break_at_every_linear or linears_outside_the_blocks_are_no" > $OUT/base_7e42d83_regional_on_torch211.log 2>&1)
export PYTHONPATH=/tmp/site:$ROOT
timeout 150 python -m pytest -q -p no:logging tests/kernels/test_prune_quantize_fp8.py > $OUT/kernel_fp8_tests_on_gpu.log 2>&1
timeout 200 python -m pytest -q -p no:logging -m gpu tests/test_gpu_float8.py -k "compressor or one_pass or simulated or rowwise" > $OUT/gpu_float8_tests.log 2>&1
timeout 150 python -m pytest -q -rf tests/test_explain.py tests/test_regional.py tests/test_lora.py -k "not tiny_dit" > $OUT/head_cpu_tests_on_torch211.log 2>&1
for f in $OUT/*.log; do echo "== $(basename $f)"; tail -4 $f | grep -E "passed|failed|FAILED|error" ; done
