"""Serving latency and throughput of rayml against what a user would run instead, on the same ONNX file, in one run.

A 30-column binary model (scikit-learn's breast-cancer data: a StandardScaler + LogisticRegression Pipeline, imported
with ``rayml.register_model``) is served four ways, side by side, and loaded by the same client in rotating rounds:

- ``rayml``: the rayml application (auth off) with the version at 100% (a small model: placement ``auto`` runs it
  in the ingress, one hop);
- ``rayml canary+shadow``: the same application's second model name, the same file as versions 1/2 at 90/10 and
  version 3 mirrored on 10% of requests;
- ``rayml replicas``: a third model name with ``placement: replicas`` (a deployment per version, two hops: what every
  rayml model was before the in-ingress placement, and what large models and model sets still get);
- ``ray one-hop``: what a user writes first in Ray Serve: one deployment that parses the v2 body and runs ONNX
  Runtime itself (``_serving.OneHopOnnx``);
- ``mlflow models serve``: the version's MLflow model served by MLflow (uvicorn, one process, ``--env-manager local``)
  with its own request format (``dataframe_split``) for the same rows;
- ``rayml capture 100%``: a single-model rayml application serving the same file with payload capture of every
  request to a local folder, against its twin without capture (each its own ingress process), at concurrency 8 with
  1-row requests and three times the rounds (what capture costs the serving path; the default 10 s flush interval).

At concurrency 1 and 16, with 1-row and 100-row requests: p50, p99 and req/s of each. Then:

    RESULT serve_overhead p50_ratio_vs_ray_one_hop=<rayml p50 / one-hop p50, concurrency 1, 1 row> target<=1.3
    RESULT serve_overhead throughput_ratio_vs_ray_one_hop=<rayml / one-hop req/s, concurrency 16, 1 row> target>=0.9
    RESULT serve_overhead throughput_ratio_vs_mlflow=<rayml / mlflow req/s, concurrency 16, 1 row> target>=1.0
    RESULT serve_overhead capture_p50_ratio=<capture 100% p50 / capture off p50, concurrency 8, 1 row> target<=1.05
    RESULT serve_overhead capture_throughput_ratio=<capture 100% / capture off req/s, concurrency 8, 1 row> target>=0.95

Usage: python benchmarks/serve_overhead.py [--seconds 4] [--rounds 2]
"""

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serving import OneHopOnnx, compare, free_port, result
from ray import serve

P50_TARGET, THROUGHPUT_TARGET, MLFLOW_TARGET = 1.3, 0.9, 1.0
CAPTURE_P50_TARGET, CAPTURE_THROUGHPUT_TARGET = 1.05, 0.95


def _start_mlflow(model_uri: str, tracking_uri: str, port: int, home: str) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log = open(Path(home) / "mlflow-serve.log", "w")  # noqa: SIM115 -- open for the server's lifetime
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"mlflow models serve did not start: {(Path(home) / 'mlflow-serve.log').read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one measured round per side")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {os.getloadavg()}")

    import ray
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    home = tempfile.mkdtemp(prefix="rayml-bench-serve-")
    os.environ["RAYML_HOME"] = home
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    mlflow_server = None
    try:
        import rayml
        from rayml.config import ServeJobConfig, load_config
        from rayml.registry import Registry
        from rayml.serve import deploy

        df = load_breast_cancer(as_frame=True).frame
        x = df.drop(columns=["target"])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, df["target"])
        registry = Registry(f"sqlite:///{home}/mlflow.db")
        info = rayml.register_model(model, name="cancer", sample=df, target="target", registry=registry)
        for _ in range(3):  # the same file as three versions of another name, for the canary + shadow app
            rayml.register_model(model, name="cancer-canary", sample=df, target="target", registry=registry)
        rayml.register_model(model, name="cancer-replicas", sample=df, target="target", registry=registry)
        rayml.register_model(model, name="cancer-capture", sample=df, target="target", registry=registry)
        onnx_file = str(registry.load(info.ref).model_dir.model_file)

        port, mlflow_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = load_config(
            ServeJobConfig,
            None,
            [
                f"serve.port={port}",
                "serve.models={cancer: {versions: [{version: 1, weight: 1.0}]}, cancer-canary: {versions: "
                "[{version: 1, weight: 0.9}, {version: 2, weight: 0.1}], shadow: {version: 3, percent: 10}}, "
                "cancer-replicas: {versions: [{version: 1, weight: 1.0}], placement: replicas}}",
                "serve.ingress.num_cpus=0.25",
                "serve.models.cancer.deployment.num_cpus=0.25",
                "serve.models.cancer-canary.deployment.num_cpus=0.25",
                "serve.models.cancer-replicas.deployment.num_cpus=0.25",
            ],
        )
        deploy(cfg, registry=registry)
        # capture: two single-model applications that differ only in capture (each its own ingress process)
        for app, capture in (("plain", ""), ("capture", f", capture: {{percent: 100, destination: {home}/captures}}")):
            twin = load_config(
                ServeJobConfig,
                None,
                [
                    f"serve.port={port}",
                    f"serve.app_name={app}",
                    f"serve.route_prefix=/{app}",
                    f"serve.models={{cancer-capture: {{versions: [{{version: 1}}]{capture}}}}}",
                    "serve.ingress.num_cpus=0.25",
                ],
            )
            deploy(twin, registry=registry)
        serve.run(OneHopOnnx.options(name="one-hop").bind(onnx_file), name="one-hop", route_prefix="/one-hop")
        mlflow_server = _start_mlflow(f"models:/cancer/{info.version}", registry.tracking_uri, mlflow_port, home)

        base = f"http://127.0.0.1:{port}"
        figures = {}
        for rows in (1, 100):
            part = x.iloc[:rows]
            v2 = {"inputs": [{"name": c, "shape": [rows], "datatype": "FP32", "data": part[c].tolist()} for c in x.columns]}
            split = {"dataframe_split": {"columns": list(x.columns), "data": part.to_numpy().tolist()}}
            sides = {
                "rayml": (f"{base}/v2/models/cancer/infer", v2),
                "rayml canary+shadow": (f"{base}/v2/models/cancer-canary/infer", v2),
                "rayml replicas": (f"{base}/v2/models/cancer-replicas/infer", v2),
                "ray one-hop": (f"{base}/one-hop/v2/models/cancer/infer", v2),
                "mlflow models serve": (f"http://127.0.0.1:{mlflow_port}/invocations", split),
            }
            for concurrency in (1, 16):
                label = f"[{rows} row(s), concurrency {concurrency}] "
                figures[rows, concurrency] = compare(sides, concurrency, args.seconds, args.rounds, label=label)
            if rows == 1:  # the capture pair: more rounds, its difference is small next to the noise of 2 cores
                capture_sides = {
                    "rayml (capture off)": (f"{base}/plain/v2/models/cancer-capture/infer", v2),
                    "rayml capture 100%": (f"{base}/capture/v2/models/cancer-capture/infer", v2),
                }
                figures[rows, 8] = compare(capture_sides, 8, args.seconds, 3 * args.rounds, label="[1 row(s), concurrency 8] ")

        print(f"\n{'server':22s} {'rows':>4s} {'conc':>4s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s}")
        for (rows, concurrency), got in figures.items():
            for name, s in got.items():
                print(f"{name:22s} {rows:4d} {concurrency:4d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['rps']:8.1f}")
        print(f"{args.rounds} rounds x {args.seconds:g}s per side; load average after: {os.getloadavg()}")
        c1, c16 = figures[1, 1], figures[1, 16]
        p50 = c1["rayml"]["p50_ms"] / c1["ray one-hop"]["p50_ms"]
        result("serve_overhead", "p50_ratio_vs_ray_one_hop", p50, "<=", P50_TARGET)
        tput = c16["rayml"]["rps"] / c16["ray one-hop"]["rps"]
        result("serve_overhead", "throughput_ratio_vs_ray_one_hop", tput, ">=", THROUGHPUT_TARGET)
        vs_mlflow = c16["rayml"]["rps"] / c16["mlflow models serve"]["rps"]
        result("serve_overhead", "throughput_ratio_vs_mlflow", vs_mlflow, ">=", MLFLOW_TARGET)
        c8 = figures[1, 8]
        captured = sum(1 for _ in Path(home, "captures").rglob("*.parquet"))
        print(f"capture: {captured} Parquet files written under {home}/captures")
        cap_p50 = c8["rayml capture 100%"]["p50_ms"] / c8["rayml (capture off)"]["p50_ms"]
        result("serve_overhead", "capture_p50_ratio", cap_p50, "<=", CAPTURE_P50_TARGET)
        cap_tput = c8["rayml capture 100%"]["rps"] / c8["rayml (capture off)"]["rps"]
        result("serve_overhead", "capture_throughput_ratio", cap_tput, ">=", CAPTURE_THROUGHPUT_TARGET)
    finally:
        if mlflow_server is not None:
            mlflow_server.terminate()
            mlflow_server.wait(timeout=30)
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
