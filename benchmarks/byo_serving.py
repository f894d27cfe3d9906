"""Serving an imported XGBoost model through rayml against the same ONNX model in plain Ray Serve, in one run.

An XGBoost classifier is fitted on scikit-learn's breast-cancer data (30 number columns) and registered with
``rayml.register_model``, which converts it (onnxmltools), wraps it to take raw columns and checks parity; the parity
figures are printed. Then, side by side on one Serve instance, the same 1-row v2 requests from the same client at a
fixed concurrency, measured in alternating rounds (a, b, a, b, ...):

(a) plain: what a user writes first in Ray Serve: one FastAPI deployment that turns the v2 body into columns and runs
    the version's ``model.onnx`` with ONNX Runtime (no rayml code; ``_serving.OneHopOnnx``);
(b) rayml: the real application (auth off) serving the imported version at 100% (a small model: it runs in the
    ingress, one hop like the baseline).

The ratios say what rayml's features (auth, validation, routing, metrics, online drift) add to that:

    RESULT byo_serving p50_ratio=<rayml p50 / plain p50> target<=1.25 PASS|MISS
    RESULT byo_serving throughput_ratio=<rayml req/s / plain req/s> target>=0.8 PASS|MISS
    RESULT byo_serving parity_max_abs_diff=<converted vs XGBoost, max over the sample> target<=0.0001 PASS|MISS

Usage: python benchmarks/byo_serving.py [--concurrency 8] [--seconds 8] [--rounds 3]
"""

import argparse
import logging
import os
import shutil
import tempfile

from _serving import OneHopOnnx, compare, free_port, result
from ray import serve

P50_TARGET, THROUGHPUT_TARGET, PARITY_TARGET = 1.25, 0.8, 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measured round per side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {os.getloadavg()}")

    import ray
    import xgboost
    from sklearn.datasets import load_breast_cancer

    home = tempfile.mkdtemp(prefix="rayml-bench-byo-")
    os.environ["RAYML_HOME"] = home
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        import rayml
        from rayml.config import ServeJobConfig, load_config
        from rayml.registry import Registry
        from rayml.serve import deploy

        df = load_breast_cancer(as_frame=True).frame
        x = df.drop(columns=["target"])
        model = xgboost.XGBClassifier(n_estimators=100, max_depth=4, n_jobs=1).fit(x, df["target"])
        registry = Registry(f"sqlite:///{home}/mlflow.db")
        info = rayml.register_model(model, name="cancer", sample=df, target="target", registry=registry)
        parity = registry.run_metrics(info.run_id)
        loaded = registry.load(info.ref)
        print(
            f"imported {info.ref} from xgboost {xgboost.__version__}: parity on {int(parity['parity_rows'])} rows: "
            f"max abs diff {parity['parity_max_abs_diff']:.2e}, classes agree on {parity['parity_label_agreement']:.1%}"
        )

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = load_config(
            ServeJobConfig,
            None,
            [
                f"serve.port={port}",
                "serve.models={cancer: {versions: [{version: 1, weight: 1.0}]}}",
                "serve.ingress.num_cpus=0.25",
                "serve.models.cancer.deployment.num_cpus=0.25",
            ],
        )
        deploy(cfg, registry=registry)
        serve.run(OneHopOnnx.options(name="plain").bind(str(loaded.model_dir.model_file)), name="plain", route_prefix="/plain")

        row = x.iloc[:1]
        body = {"inputs": [{"name": c, "shape": [1], "datatype": "FP32", "data": row[c].tolist()} for c in x.columns]}
        sides = {
            "plain Ray Serve + ORT": (f"http://127.0.0.1:{port}/plain/v2/models/cancer/infer", body),
            "rayml, imported XGBoost": (f"http://127.0.0.1:{port}/v2/models/cancer/infer", body),
        }
        got = compare(sides, args.concurrency, args.seconds, args.rounds)
        for name, s in got.items():
            print(f"{name:26s} p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms  {s['rps']:7.1f} req/s  ({s['n']} requests)")
        print(f"concurrency {args.concurrency}, {args.rounds} rounds x {args.seconds:g}s per side")
        print(f"load average after: {os.getloadavg()}")
        a, b = got["plain Ray Serve + ORT"], got["rayml, imported XGBoost"]
        result("byo_serving", "p50_ratio", b["p50_ms"] / a["p50_ms"], "<=", P50_TARGET)
        result("byo_serving", "throughput_ratio", b["rps"] / a["rps"], ">=", THROUGHPUT_TARGET)
        result("byo_serving", "parity_max_abs_diff", float(parity["parity_max_abs_diff"]), "<=", PARITY_TARGET)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
