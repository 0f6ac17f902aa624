# The two commands a newcomer needs: `make run` and `make test`. Both install what they need.
.PHONY: run test lint typecheck unit bench

run:
	./scripts/bootstrap.sh
	.venv/bin/telepath serve

test:
	./scripts/bootstrap.sh --test
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
	.venv/bin/pytest -n auto --maxprocesses 2 --dist worksteal

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench

typecheck:
	.venv/bin/mypy

unit:
	.venv/bin/pytest -m unit

bench:
	./scripts/bootstrap.sh --test
	.venv/bin/python -m bench
