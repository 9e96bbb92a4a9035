-- Run once by the postgres image's entrypoint, as POSTGRES_USER, when the data
-- volume is empty (first `docker compose up`). It is NOT run against an existing
-- volume: there, create the database by hand (`CREATE DATABASE mlflow;`).
-- POSTGRES_DB holds the predictions; `mlflow` is MLflow's backend store.
CREATE DATABASE mlflow;
