"""The served model's definition, logged as code (MLflow's "models from code").

`mlflow.pyfunc.log_model(python_model=<this file>)` stores this file's source instead of a cloudpickle of a
`TextClassifierModel` instance: nothing is pickled, so loading does not depend on the Python and
cloudpickle versions that logged it, and MLflow does not warn about pickling at every export. MLflow runs
this file when the model loads (with textrnn itself bundled through `code_paths`).
"""

import mlflow

from textrnn.pyfunc import TextClassifierModel

mlflow.models.set_model(TextClassifierModel())
