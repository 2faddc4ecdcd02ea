#!/bin/sh
# postgres image: one database each for MLflow and Prefect (names from docker/stack.env)
set -e
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -c "CREATE DATABASE \"$STACK_MLFLOW_DB\"" -c "CREATE DATABASE \"$STACK_PREFECT_DB\""
