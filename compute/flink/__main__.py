"""``python -m compute.flink``: build the compute job from settings and run it (blocking).

Settings come from GSS_* environment variables and GSS_CONFIG, as everywhere in GSS. This
is the entry point ``flink run -pym compute.flink`` and the Kubernetes operator's
PythonDriver (deploy/flink/) use; set GSS_COMPUTE__MODE=application there.
"""

from compute.flink.run import execute
from contract import logs
from contract.settings import load_settings

settings = load_settings()
logs.configure(settings.log_level, settings.log_format)
execute(settings)
