"""Prefect wiring over `textrnn.steps`: the training pipeline, the per-variant flow, sweeps, batch scoring.

Nothing here computes anything the CLI or DVC could not: every task calls one `textrnn.steps` function
(or the inference path) with a `Config`. What this package adds is orchestration: caching on stable
keys, retries where the outside world can fail, bounded fan-out of the variants (a process per variant locally,
or one flow run per variant on a work pool), the MLflow parent run, and a comparison artifact.

Entrypoints (see prefect.yaml): `flows/training.py:training_pipeline`,
`flows/training.py:train_variant_flow`, `flows/tuning.py:tune_flow`, `flows/tuning.py:tune_worker_flow`,
`flows/batch.py:batch_predict`.
"""

from __future__ import annotations

import os

# Read by Prefect's (temporary) server when it starts: no usage reporting from our runs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server migrates a fresh database on its first start; Prefect's 20 s is too short for
# that on a busy laptop or CI runner, and a dead server still fails within this bound.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
