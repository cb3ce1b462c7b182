-- The prediction ledger's own database on the compose stack's PostgreSQL (beside MLflow's `mlflow`). PostgreSQL's
-- image runs this once, when it initialises an empty data volume; on a volume made before, run it by hand:
--   docker compose exec postgres psql -U mlflow -d mlflow -c 'CREATE DATABASE ledger'
-- The service creates its tables itself (Alembic migrations on start).
CREATE DATABASE ledger;
