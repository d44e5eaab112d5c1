python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LYNX_BUILD_DIR=$PWD/.lynx_cache/cutlass LYNX_CACHE_DIR=/tmp/lynx_measure || exit
git log --oneline -1 > $OUT/commit.txt 2>/dev/null || true
timeout 200 python -m pytest -q -rf tests/test_explain.py tests/test_regional.py > $OUT/cpu_tests_on_torch211.log 2>&1
timeout 280 python -m pytest -q -p no:logging -m gpu tests/test_gpu.py -k "test_tiny_diffusers_model_sparse_matches_simulate or test_full_size_flux_single_block_sparse_matches_simulate or regional" > $OUT/gpu_tests.log 2>&1
tail -8 $OUT/cpu_tests_on_torch211.log; grep -E "^E  |FAILED|passed|failed" $OUT/gpu_tests.log | head -20
