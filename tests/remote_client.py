"""What a worker on another host does and may not do, run by tests/test_stack_remote.py inside a network
namespace: `python -m tests.remote_client` with STACK_DIR pointing at the stack's env file (the file a
hospital copies to a worker host). Prints one JSON object of what it saw."""
import json
import os
import socket
import sys
from pathlib import Path

MODEL = "remote-probe"  # not the pipeline's model: the worker test trains that one for real


def anonymous(values: dict, ca: str) -> dict:
    """Requests without credentials (TLS verified), plain HTTP to the TLS ports, a client that does not
    trust the stack's CA, and PostgreSQL's port (on loopback only, behind no front)."""
    import httpx

    web = httpx.Client(verify=ca, timeout=10)
    ml, api, s3 = values["MLFLOW_TRACKING_URI"], values["PREFECT_API_URL"], values["STACK_S3_ENDPOINT"]
    seen = {"mlflow": web.get(f"{ml}/api/2.0/mlflow/experiments/search?max_results=1").status_code,
            "mlflow_alias": web.post(f"{ml}/api/2.0/mlflow/registered-models/alias",
                                     json={"name": "oralscan-classifier", "alias": "champion", "version": "1"}).status_code,
            "prefect": web.post(f"{api}/flows/filter", json={}).status_code,
            "s3_list": web.get(f"{s3}/dvc").status_code, "s3_put": web.put(f"{s3}/dvc/anonymous", content=b"x").status_code,
            "plain_http": {}}
    clinic = values["STACK_CLINIC_URL"]  # the clinic's page: its health only, every page sends you to sign in
    seen["clinic"] = [web.get(f"{clinic}health").status_code, web.get(f"{clinic}approvals").headers.get("location", "")]
    for name, url in (("mlflow", ml), ("prefect", api), ("s3", s3), ("clinic", clinic)):
        answer = httpx.get(url.replace("https://", "http://"), timeout=10)
        seen["plain_http"][name] = [answer.status_code, "plain HTTP request was sent to HTTPS port" in answer.text]
    try:
        httpx.get(f"{ml}/health", timeout=10)  # the system's store only: the stack's CA is not in it
        seen["untrusted"] = "accepted"
    except httpx.ConnectError as e:
        seen["untrusted"] = "CERTIFICATE_VERIFY_FAILED" in str(e)
    host = ml.split("//")[1].split(":")[0]
    with socket.socket() as sock:
        sock.settimeout(5)
        seen["postgres_port"] = sock.connect_ex((host, int(os.environ["STACK_POSTGRES_PORT"])))
    return seen


def as_pipeline(values: dict) -> dict:
    """The worker's side with the pipeline's credentials, through the project's own client code: an MLflow
    run with an artifact and a champion with a decision history, an S3 put with the `dvc` identity, a
    Prefect flow run on the server."""
    import boto3
    import mlflow
    from prefect import flow

    from flows.prefect_api import server_settings
    from pipeline import tracking
    from pipeline.registry import aliases

    tracking.setup("from-another-host")  # the env file's URI, sign-in and CA (pipeline.endpoints.use_credentials)
    with mlflow.start_run() as run:
        mlflow.log_param("host", socket.gethostname())
        mlflow.log_text("trained elsewhere", "model/weights.txt")
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL)
    versions = [client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id).version
                for _ in range(2)]
    aliases.move_alias(client, MODEL, "champion", versions[0], None, "worker", "champion", "first", "d1")
    aliases.move_alias(client, MODEL, "champion", versions[1], versions[0], "worker", "champion",
                       "better", "d2")
    s3 = boto3.client("s3", endpoint_url=values["STACK_S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=values["STACK_DVC_ACCESS_KEY_ID"],
                      aws_secret_access_key=values["STACK_DVC_SECRET_ACCESS_KEY"])  # AWS_CA_BUNDLE verifies
    s3.put_object(Bucket="dvc", Key="from-another-host", Body=b"1")

    @flow(name="from-another-host")
    def hello() -> str:
        return "ran"

    with server_settings():
        state = hello(return_state=True)
    return {"run": run.info.run_id, "champion": client.get_registered_model(MODEL).aliases,
            "s3": s3.get_object(Bucket="dvc", Key="from-another-host")["Body"].read().decode(),
            "flow": state.type.value}


def main() -> None:
    from pipeline.endpoints import read_env_file

    values = read_env_file(Path(os.environ["STACK_DIR"]) / "env")
    os.environ["AWS_CA_BUNDLE"] = values["AWS_CA_BUNDLE"]  # boto3 reads it from the environment
    seen = anonymous(values, values["REQUESTS_CA_BUNDLE"]) if sys.argv[1] == "anonymous" else as_pipeline(values)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
