"""
Title: Transfer learning, then label new photos
Description: the default EfficientNet-Lite0 transfer model, loaded back to label photos.

The ImageNet weights come from a pip package, so this works offline. The frozen backbone
turns every photo into features once; only the small head is trained.

    python examples/transfer_and_predict.py --photos ../shared/data/cvtricks
"""

import argparse
from pathlib import Path

import pawnet

parser = argparse.ArgumentParser(description=__doc__.split("\n")[2])
parser.add_argument("--photos", default="../shared/data/cvtricks")
parser.add_argument("--epochs", type=int, default=60)
parser.add_argument("--image-size", type=int, default=224)
parser.add_argument("--out", default="runs/example-transfer")
args = parser.parse_args()

run = pawnet.train(args.photos, epochs=args.epochs, image_size=args.image_size, out=args.out)

# The bundle holds everything prediction needs: class names, image size, preprocessing.
predictor = pawnet.load(run)
new_photos = sorted(Path(args.photos).rglob("*.jpg"))[:4]
for prediction in predictor.predict(new_photos):
    print(f"{prediction.path}: {prediction.label} ({prediction.confidence:.3f})")

# Raw bytes work too, e.g. from an upload.
[from_bytes] = predictor.predict(new_photos[0].read_bytes())
print(f"the same photo as bytes: {from_bytes.label}")
