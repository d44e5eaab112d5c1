python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit
timeout 200 python -m pytest -q -rf tests/test_explain.py tests/test_regional.py tests/test_backend.py > $OUT/head_cpu_tests_on_torch211.log 2>&1
tail -6 $OUT/head_cpu_tests_on_torch211.log
