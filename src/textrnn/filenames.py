"""The name of every file textrnn writes, defined once.

`textrnn.config.PathsConfig` places each in the working directory (`cfg.paths.onnx_file(variant)`, ...);
code that works in another directory (a staging directory before its atomic swap, a model downloaded from
MLflow, the files a pyfunc model bundles) joins the bare name itself. No imports: the served pyfunc model
reads these names too.
"""

PREPARED_REPORT_FILE = "report.json"  # paths.prepared: what prepare read, dropped and wrote
TOKENIZER_FILE = "tokenizer.json"  # paths.encoded, and beside each exported graph
BUCKETS_FILE = "buckets.json"  # paths.encoded: bucketing's padding report
LINEAGE_FILE = "lineage.json"  # paths.encoded: sha256 of what encode read and wrote
MODEL_FILE = "model.pt"  # models/<V>: the best epoch's weights
CHECKPOINT_FILE = "checkpoint.pt"  # models/<V>: where `train --resume` continues
RUN_RECORD_FILE = "mlflow_run.json"  # models/<V>: the variant's MLflow run
ONNX_FILE = "model.onnx"  # models/<V>: the exported graph
EXPORT_REPORT_FILE = "export.json"  # models/<V>: the published graph's parity report
EXPORT_FAILURE_FILE = "export.failed.json"  # models/<V>: what a failed export measured; no step reads it
TRAIN_REPORT_FILE = "train.json"  # metrics/<V>
EVAL_REPORT_FILE = "eval.json"  # metrics/<V>
HEADLINE_FILE = "headline.json"  # metrics/<V>: the few numbers `dvc metrics show` compares
PROMOTION_FILE = "promotion.json"  # metrics/
PREDICTIONS_FILE = "predictions.json"  # plots/<V>
CONFUSION_MATRIX_FILE = "confusion_matrix.png"  # plots/<V>
LEARNING_CURVES_FILE = "learning_curves.png"  # plots/<V>


def prepared_split_file(split: str) -> str:
    return f"{split}.parquet"


def encoded_split_file(split: str) -> str:
    return f"{split}.npz"
