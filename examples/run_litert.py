"""Label a photo with a `pawnet export --format litert` folder: numpy, Pillow and ai-edge-litert
only (no TensorFlow, no pawnet).  python run_litert.py EXPORT_DIR PHOTO"""

import json
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image, ImageOps

folder, photo = Path(sys.argv[1]), sys.argv[2]
info = json.loads((folder / "pawnet.json").read_text())
size = info["image_size"]

image = Image.open(photo)
width, height = image.size  # its own size: below min_side, too small to judge
if image.format == "JPEG":  # decode at reduced size when the photo is 2x the input or more
    image.draft(image.mode, (size, size))
image = ImageOps.exif_transpose(image)
if (image.width > image.height) != (width > height):
    width, height = height, width  # turned a quarter by its EXIF orientation
if image.mode in ("RGBA", "LA", "P"):  # transparency goes onto white, as in training
    image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
pixels = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))

interpreter = Interpreter(model_path=str(folder / info["file"]))
interpreter.allocate_tensors()
batch = pixels[None].astype(np.float32)  # raw 0-255 RGB, NHWC; scaling is inside the model
interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
interpreter.invoke()
out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
score = None
if info.get("ood_threshold") is not None:  # the last column is the OOD score
    out, score = out[:-1], float(out[-1])
probs = np.array([1 - out[0], out[0]] if info["output"] == "sigmoid" else out, np.float64)
logits = np.log(np.clip(probs, 1e-7, 1.0)) / info["temperature"]  # calibration
probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
label, reason = info["class_names"][int(np.argmax(probs))], None
if min(width, height) < info.get("min_side", 0):
    label, reason = "unsure", f"too small ({width}x{height})"
elif score is not None and score > info["ood_threshold"]:
    label = "neither"
    reason = f"unlike the training photos (score {score:.4g} > {info['ood_threshold']:.4g})"
elif probs.max() < info.get("min_confidence", 0.0):
    label = "unsure"
    reason = f"no class likely enough ({probs.max():.4g} < {info['min_confidence']:.4g})"
print(json.dumps({"label": label, "reason": reason, "ood_score": score, "probabilities": dict(
    zip(info["class_names"], map(float, probs), strict=True))}))
