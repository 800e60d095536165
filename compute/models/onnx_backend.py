"""A Triton Python-backend model that runs its version directory's ``model.onnx`` with onnxruntime.

Each ONNX model of this repository (efficientnet_lite0, open_nsfw, ocr_det, ocr_rec) has a
``<version>/model.py`` that is a symlink to this file, so the local Triton (nvidia-pytriton's,
which has only the Python backend) serves the .onnx on CPU. The same directories serve the
same .onnx with Triton's onnxruntime backend on GPU through ``configs/gpu.pbtxt``
(``platform: "onnxruntime_onnx"``), which ignores model.py: the inputs, outputs and their
names are the ONNX graph's in both configurations, so callers see no difference.

Config parameters (optional, ``parameters { key: ... value { string_value: ... } }``):
``intra_op_threads`` (onnxruntime threads per session; default 0 = onnxruntime's choice).

Needs numpy and onnxruntime in the Python that runs the backend stub.
"""

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, benchmarks)
    pb_utils = None


def open_session(path, intra_op_threads=0):
    """An onnxruntime CPU session over ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_threads)
    # One Python-backend instance runs one request batch at a time.
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_config(config, session):
    """Refuse a config.pbtxt whose tensor names differ from the ONNX graph's."""
    declared = {t["name"] for t in config["input"]}, {t["name"] for t in config["output"]}
    graph = {i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()}
    if declared != graph:
        raise ValueError(
            f"{config['name']}: config.pbtxt declares inputs/outputs {declared}, "
            f"model.onnx has {graph}"
        )


def run_grouped(session, output_names, inputs_per_request):
    """Run one session call per group of requests whose inputs have equal item shapes.

    ``inputs_per_request`` is a list of {name: array with the batch dimension}; returns a
    list (one per request) of {name: array}. Requests of one group are concatenated along
    the batch dimension, computed once and split again.
    """
    groups = {}
    for index, inputs in enumerate(inputs_per_request):
        key = tuple((name, array.shape[1:]) for name, array in sorted(inputs.items()))
        groups.setdefault(key, []).append(index)
    results = [None] * len(inputs_per_request)
    for indices in groups.values():
        names = inputs_per_request[indices[0]].keys()
        feed = {
            name: np.concatenate([inputs_per_request[i][name] for i in indices], axis=0)
            for name in names
        }
        outputs = session.run(output_names, feed)
        start = 0
        for i in indices:
            size = inputs_per_request[i][next(iter(names))].shape[0]
            results[i] = {
                name: out[start : start + size] for name, out in zip(output_names, outputs)
            }
            start += size
    return results


class TritonPythonModel:
    """Triton entry point: the ONNX graph, one onnxruntime call per same-shaped group."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        threads = (
            config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0")
        )
        self.session = open_session(path, threads)
        check_config(config, self.session)
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests):
        inputs = [
            {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.input_names
            }
            for request in requests
        ]
        try:
            results = run_grouped(self.session, self.output_names, inputs)
        except Exception as exc:  # an onnxruntime failure answers every request with it
            error = pb_utils.TritonError(f"onnxruntime: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, result[name]) for name in self.output_names]
            )
            for result in results
        ]
