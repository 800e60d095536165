"""images/ocr_text@1: the lines of text in the image, from the ocr_text model (PP-OCRv4)."""

from compute import Model, signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from compute.triton.inputs import ocr_input
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import OcrText, TextLine


@signal(galaxy="images", name="ocr_text", version=1, source=IMAGES, model="ocr_text")
async def ocr_text(event: ImageEvent, model: Model) -> OcrText:
    outputs = await model.infer(ocr_input(image_array(event)))
    lines = [
        TextLine(
            text=text.decode("utf-8"),
            x0=int(box[0]),
            y0=int(box[1]),
            x1=int(box[2]),
            y1=int(box[3]),
            confidence=float(confidence),
        )
        for text, box, confidence in zip(
            outputs["TEXT"], outputs["BOXES"], outputs["CONFIDENCE"], strict=True
        )
    ]
    return OcrText(lines=lines)
