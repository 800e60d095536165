"""ocr_text: the lines of text in an image (Triton Python backend, BLS over ocr_det, ocr_cls
and ocr_rec).

Input ``IMAGE``: UINT8 [H, W, 3], RGB, any size (max_batch_size 0: one image a request).
Outputs, one row per line found, top to bottom then left to right:
``TEXT`` BYTES [n] (UTF-8), ``BOXES`` INT32 [n, 4] (x0, y0, x1, y1 in input pixels, x1/y1
exclusive), ``CONFIDENCE`` FP32 [n] (the recogniser's mean per-character probability).

The PP-OCRv4 pipeline of rapidocr-onnxruntime 1.4.4 (PaddleOCR's defaults), in numpy:

1. detection input: RGB -> BGR (PaddleOCR's models read OpenCV's BGR); scaled so the long
   side is at most DET_LIMIT_SIDE (no upscaling), each side rounded to a multiple of 32;
   bilinear; (x / 255 - 0.5) / 0.5; NCHW -> ``ocr_det`` -> text probability map;
2. boxes (DB post-processing): probability > DET_THRESHOLD, dilated by 2x2, 8-connected
   components; a component's mean probability over its box must reach BOX_THRESHOLD; the
   box is grown by ``area * UNCLIP_RATIO / perimeter`` on every side, scaled back to the
   input and clipped. Boxes are axis-aligned (rapidocr fits rotated rectangles with
   OpenCV): text rotated by more than a few degrees is read poorly;
3. orientation: each box cropped (rotated 90 degrees when at least 1.5 times taller than
   wide), resized to 48 high and at most 192 wide keeping its aspect ratio, normalised like
   detection, right-padded with zeros to 192, CLS_BATCH crops a request -> ``ocr_cls`` ->
   P(upright), P(upside down); a crop upside down with probability above CLS_THRESHOLD is
   turned 180 degrees;
4. recognition: each crop resized to height 48 keeping its aspect ratio (bilinear),
   (x / 255 - 0.5) / 0.5, right-padded with zeros to the widest of its batch (at least 320),
   REC_BATCH crops a request -> ``ocr_rec`` -> per-column character probabilities; greedy CTC decoding
   (argmax, repeats merged, blanks dropped) over characters.txt (index 0 is the blank, the
   last a space); lines whose confidence is below TEXT_THRESHOLD or whose text is empty are
   dropped.

Only numpy is needed here: the ONNX models run in ocr_det, ocr_cls and ocr_rec (onnxruntime
in the Python backend on CPU, Triton's onnxruntime backend on GPU), called through BLS. The
config parameter ``cls_model`` set to "" skips step 3.
"""

import json
import math
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, benchmarks): `read_text` is used
    pb_utils = None

DET_LIMIT_SIDE = 960
DET_THRESHOLD = 0.3
BOX_THRESHOLD = 0.5
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3
MAX_BOXES = 1000
REC_HEIGHT = 48
REC_MIN_WIDTH = 320
REC_BATCH = 6
CLS_WIDTH = 192
CLS_BATCH = 6
CLS_THRESHOLD = 0.9
TEXT_THRESHOLD = 0.5
LINE_TOLERANCE = 10


def load_characters(path):
    """The CTC alphabet: blank, the characters of ``path`` (one a line), space."""
    with open(path, encoding="utf-8") as f:
        characters = f.read().split("\n")
    if characters and characters[-1] == "":
        characters.pop()
    return ["", *characters, " "]


def resize_bilinear(image, height, width):
    """[height, width, C] uint8, bilinear with half-pixel centres (OpenCV's INTER_LINEAR)."""
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (height, width):
        return image

    def axis(size_in, size_out):
        pos = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (pos - low).astype(np.float32)

    y0, y1, wy = axis(in_h, height)
    x0, x1, wx = axis(in_w, width)
    pixels = image.astype(np.float32)
    wx = wx[None, :, None]
    top = pixels[y0][:, x0] * (1 - wx) + pixels[y0][:, x1] * wx
    bottom = pixels[y1][:, x0] * (1 - wx) + pixels[y1][:, x1] * wx
    out = top * (1 - wy[:, None, None]) + bottom * wy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalise(bgr):
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""
    return ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def detection_input(bgr):
    """The ocr_det input [1, 3, H', W'] for a BGR image."""
    height, width = bgr.shape[:2]
    ratio = min(1.0, DET_LIMIT_SIDE / max(height, width))
    det_h = max(32, int(round(int(height * ratio) / 32) * 32))
    det_w = max(32, int(round(int(width * ratio) / 32) * 32))
    return normalise(resize_bilinear(bgr, det_h, det_w))[None]


def components(mask):
    """8-connected components of a boolean mask: [n, 4] boxes (x0, y0, x1, y1 inclusive)."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    starts = np.argwhere(edges == 1)
    ends = np.argwhere(edges == -1)
    if len(starts) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    rows, first, stop = starts[:, 0], starts[:, 1], ends[:, 1]  # run: [first, stop)
    parent = np.arange(len(rows))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bounds = np.searchsorted(rows, np.arange(height + 1))
    for y in range(1, height):
        i, i_end = bounds[y - 1], bounds[y]
        j, j_end = bounds[y], bounds[y + 1]
        while i < i_end and j < j_end:
            # 8-connectivity: runs of adjacent rows touch if they overlap or meet diagonally.
            if first[i] <= stop[j] and first[j] <= stop[i]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if stop[i] < stop[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(len(rows))])
    labels, inverse = np.unique(roots, return_inverse=True)
    boxes = np.empty((len(labels), 4), dtype=np.int64)
    boxes[:, 0] = width
    boxes[:, 1] = height
    boxes[:, 2:] = -1
    np.minimum.at(boxes[:, 0], inverse, first)
    np.minimum.at(boxes[:, 1], inverse, rows)
    np.maximum.at(boxes[:, 2], inverse, stop - 1)
    np.maximum.at(boxes[:, 3], inverse, rows)
    return boxes


def text_boxes(probability, image_height, image_width):
    """DB post-processing of one probability map [H', W']: int [n, 4] boxes in the image."""
    det_h, det_w = probability.shape
    mask = probability > DET_THRESHOLD
    # OpenCV's dilate with a 2x2 kernel: each pixel takes the max of itself, up and left.
    dilated = mask.copy()
    dilated[1:, :] |= mask[:-1, :]
    dilated[:, 1:] |= mask[:, :-1]
    dilated[1:, 1:] |= mask[:-1, :-1]
    boxes = []
    for x0, y0, x1, y1 in components(dilated)[:MAX_BOXES]:
        width, height = x1 - x0, y1 - y0
        if min(width, height) < MIN_BOX_SIDE:
            continue
        score = float(probability[y0 : y1 + 1, x0 : x1 + 1].mean())
        if score < BOX_THRESHOLD:
            continue
        grow = width * height * UNCLIP_RATIO / (2 * (width + height))
        gx0, gy0, gx1, gy1 = x0 - grow, y0 - grow, x1 + grow, y1 + grow
        if min(gx1 - gx0, gy1 - gy0) < MIN_BOX_SIDE + 2:
            continue
        box = [
            np.clip(round(gx0 / det_w * image_width), 0, image_width),
            np.clip(round(gy0 / det_h * image_height), 0, image_height),
            np.clip(round(gx1 / det_w * image_width), 0, image_width),
            np.clip(round(gy1 / det_h * image_height), 0, image_height),
        ]
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            boxes.append(box)
    # Reading order: top to bottom, and left to right within a line (tops within tolerance).
    boxes.sort(key=lambda b: (b[1], b[0]))
    for i in range(len(boxes) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[j], boxes[j + 1]
            if abs(b[1] - a[1]) < LINE_TOLERANCE and b[0] < a[0]:
                boxes[j], boxes[j + 1] = b, a
            else:
                break
    return np.array(boxes, dtype=np.int32).reshape(-1, 4)


def crop(bgr, box):
    x0, y0, x1, y1 = (int(v) for v in box)
    piece = bgr[y0:y1, x0:x1]
    if piece.shape[0] >= 1.5 * piece.shape[1]:
        piece = np.rot90(piece)
    return piece


def classification_input(crops):
    """The ocr_cls input [n, 3, 48, 192] for crops."""
    batch = np.zeros((len(crops), 3, REC_HEIGHT, CLS_WIDTH), dtype=np.float32)
    for i, piece in enumerate(crops):
        resized_w = min(CLS_WIDTH, int(math.ceil(REC_HEIGHT * piece.shape[1] / piece.shape[0])))
        batch[i, :, :, :resized_w] = normalise(resize_bilinear(piece, REC_HEIGHT, resized_w))
    return batch


def upright(crops, classify):
    """``crops`` with those the classifier finds upside down turned 180 degrees."""
    crops = list(crops)
    for start in range(0, len(crops), CLS_BATCH):
        probabilities = classify(classification_input(crops[start : start + CLS_BATCH]))
        for offset, p in enumerate(probabilities):
            if p.argmax() == 1 and p[1] > CLS_THRESHOLD:
                crops[start + offset] = np.ascontiguousarray(crops[start + offset][::-1, ::-1])
    return crops


def recognition_input(crops):
    """The ocr_rec input [n, 3, 48, W] for crops of one batch (W: the widest, >= 320)."""
    ratios = [c.shape[1] / c.shape[0] for c in crops]
    width = int(REC_HEIGHT * max(REC_MIN_WIDTH / REC_HEIGHT, *ratios))
    batch = np.zeros((len(crops), 3, REC_HEIGHT, width), dtype=np.float32)
    for i, (piece, ratio) in enumerate(zip(crops, ratios)):
        resized_w = min(width, int(math.ceil(REC_HEIGHT * ratio)))
        batch[i, :, :, :resized_w] = normalise(resize_bilinear(piece, REC_HEIGHT, resized_w))
    return batch


def ctc_decode(probabilities, characters):
    """Greedy CTC over [n, T, classes]: a (text, confidence) per row."""
    best = probabilities.argmax(axis=2)
    confidence = probabilities.max(axis=2)
    lines = []
    for indices, scores in zip(best, confidence):
        keep = np.ones(len(indices), dtype=bool)
        keep[1:] = indices[1:] != indices[:-1]
        keep &= indices != 0
        text = "".join(characters[i] for i in indices[keep])
        lines.append((text, float(scores[keep].mean()) if keep.any() else 0.0))
    return lines


def read_text(rgb, detect, recognise, characters, classify=None):
    """Lines of text in an RGB uint8 image: (texts, boxes [n, 4] int32, confidences [n]).

    ``detect(array [1, 3, H, W] float32) -> [1, 1, H, W]``,
    ``classify(array [n, 3, 48, 192] float32) -> [n, 2]`` (None: no orientation step) and
    ``recognise(array [n, 3, 48, W] float32) -> [n, T, classes]`` run the ONNX models
    (through Triton in the served model; onnxruntime directly in tests and benchmarks).
    """
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    probability = detect(detection_input(bgr))[0, 0]
    boxes = text_boxes(probability, height, width)
    crops = [crop(bgr, box) for box in boxes]
    if classify is not None and crops:
        crops = upright(crops, classify)
    # Batches of similar aspect ratio pad least (rapidocr's order).
    order = np.argsort([c.shape[1] / c.shape[0] for c in crops], kind="stable")
    decoded = [None] * len(crops)
    for start in range(0, len(order), REC_BATCH):
        chunk = order[start : start + REC_BATCH]
        lines = ctc_decode(recognise(recognition_input([crops[i] for i in chunk])), characters)
        for i, line in zip(chunk, lines):
            decoded[i] = line
    texts, kept, confidences = [], [], []
    for box, (text, confidence) in zip(boxes, decoded):
        if text.strip() and confidence >= TEXT_THRESHOLD:
            texts.append(text)
            kept.append(box)
            confidences.append(confidence)
    return (
        texts,
        np.array(kept, dtype=np.int32).reshape(-1, 4),
        np.array(confidences, dtype=np.float32),
    )


def _call(model_name, input_name, array, output_name):
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=[output_name],
        inputs=[pb_utils.Tensor(input_name, array)],
    )
    response = request.exec()
    if response.has_error():
        raise pb_utils.TritonModelException(
            f"{model_name}: {response.error().message()}"
        )
    return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()


class TritonPythonModel:
    """Triton entry point: one image a request, ocr_det and ocr_rec called through BLS."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        self.det_model = parameters.get("det_model", {}).get("string_value", "ocr_det")
        self.rec_model = parameters.get("rec_model", {}).get("string_value", "ocr_rec")
        self.cls_model = parameters.get("cls_model", {}).get("string_value", "ocr_cls")
        path = os.path.join(args["model_repository"], args["model_version"], "characters.txt")
        self.characters = load_characters(path)

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                texts, boxes, confidences = read_text(
                    image,
                    lambda x: _call(self.det_model, "INPUT", x, "PROB"),
                    lambda x: _call(self.rec_model, "INPUT", x, "PROBS"),
                    self.characters,
                    (lambda x: _call(self.cls_model, "INPUT", x, "PROBS"))
                    if self.cls_model
                    else None,
                )
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            text = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("TEXT", text),
                        pb_utils.Tensor("BOXES", boxes),
                        pb_utils.Tensor("CONFIDENCE", confidences),
                    ]
                )
            )
        return responses
