# The two commands a newcomer needs:
#   make demo   one full continual-training cycle on generated sample data, ending with a served model
#   make test   the test suite (unit, integration against real servers, end to end through Airflow),
#               on two processes that each take whole modules, the long ones first (tests/conftest.py)
.PHONY: setup demo test test-fast lint bench bench-serving bench-gpu stop clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/emoflow demo

test: setup
	.venv/bin/pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# every test but those that train a model for more than one epoch
test-fast: setup
	.venv/bin/pytest -m "not slow"

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

bench: setup
	.venv/bin/python bench/sample_map.py
	.venv/bin/python bench/serving_speed.py

bench-serving: setup
	.venv/bin/python bench/serving_speed.py

# on a GPU worker: the training step vs plain `yolo train`, imgsz 96 vs 640, raw GPU inference;
# the service's inference path on the GPU with and without batching
bench-gpu: setup
	.venv/bin/python bench/gpu_train.py
	.venv/bin/python bench/gpu_serving.py

stop:
	.venv/bin/emoflow stop all

clean: stop
	rm -rf .emoflow
