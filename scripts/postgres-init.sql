-- Databases of the distributed mode: Airflow's (created by POSTGRES_DB), MLflow's, the prediction log's.
CREATE DATABASE mlflow OWNER emoflow;
CREATE DATABASE emoflow OWNER emoflow;
