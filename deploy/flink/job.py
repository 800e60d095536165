"""The compute job's entry point under the Flink Kubernetes Operator (PythonDriver -py).

Settings come from GSS_* environment variables and GSS_CONFIG, as everywhere in GSS; the
FlinkDeployment sets them. Same as ``python -m compute.flink``.
"""

from compute.flink.run import execute
from contract import logs
from contract.settings import load_settings

if __name__ == "__main__":
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    execute(settings)
