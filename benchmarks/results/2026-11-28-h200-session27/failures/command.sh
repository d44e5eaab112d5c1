python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LYNX_BUILD_DIR=$PWD/.lynx_cache/cutlass LYNX_CACHE_DIR=/tmp/lynx_measure || exit
timeout 100 python -m pytest -q -rf tests/test_explain.py tests/test_backend.py > $OUT/cpu_tests_on_torch211.log 2>&1
timeout 300 python -m pytest -q -p no:logging -m gpu tests/test_gpu.py -k "test_tiny_diffusers_model_sparse_matches_simulate or test_full_size_flux_single_block_sparse_matches_simulate" > $OUT/gpu_fail.log 2>&1
tail -3 $OUT/cpu_tests_on_torch211.log; grep -E "^E |FAILED" $OUT/gpu_fail.log | head -30
