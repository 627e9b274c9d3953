"""Classify a folder with a model from `bottleneck export-model`: onnxruntime, numpy and Pillow only.
Usage: python onnx_classify.py classifier.onnx images/   (prints path,label,probability)"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
preps, classes = meta["bottleneck.preprocess"], meta["bottleneck.classes"]
preps = preps if isinstance(preps, list) else [preps]  # a fused head's file: a crop per block, an input each
names = [i.name for i in session.get_inputs()]


def crop(path, prep):  # the shorter side to resize_size, then the centre input_size x input_size
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    r, s, (w, h) = prep["resize_size"], prep["input_size"], img.size
    size = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    img = img.resize(size, Image.Resampling[prep["interpolation"].upper()])
    left, top = round((size[0] - s) / 2), round((size[1] - s) / 2)
    return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


for path in sorted(p for p in Path(sys.argv[2]).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}):
    crops = {name: crop(path, prep)[None] for name, prep in zip(names, preps, strict=True)}
    probabilities = session.run(["probabilities"], crops)[0][0]
    print(f"{path},{classes[probabilities.argmax()]},{probabilities.max():.4f}")
