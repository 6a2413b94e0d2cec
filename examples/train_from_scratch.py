"""
Title: Train a cats-vs-dogs CNN from scratch
Description: pawnet's from-scratch default on a folder of photos, evaluated on held-out ones.

The photos can be in any layout pawnet reads: one folder per class, train/val/test
folders, or Kaggle-style `cat.1.jpg` files. Bad files are skipped and listed, never deleted.

    python examples/train_from_scratch.py --photos ../shared/data/cvtricks
"""

import argparse

import pawnet

# Settings, named once.
parser = argparse.ArgumentParser(description=__doc__.split("\n")[2])
parser.add_argument("--photos", default="../shared/data/cvtricks")
parser.add_argument("--epochs", type=int, default=40)
parser.add_argument("--image-size", type=int, default=96)
parser.add_argument("--out", default="runs/example-scratch")
args = parser.parse_args()

# What is there, and what is wrong with it.
photoset = pawnet.scan(args.photos)
print(photoset.summary())

# Train: pawnet-cnn is a small ResNet-style CNN; augmentation runs in the input pipeline
# only, so the saved model sees plain photos.
run = pawnet.train(args.photos, model="pawnet-cnn", epochs=args.epochs,
                   image_size=args.image_size, augment=["crop", "flip"], out=args.out)

# Evaluate on the run's own held-out test split (or give a folder of other photos), then
# write the report folder (report.html, report.md, report.json, plots) into the run.
report = pawnet.evaluate(run)
print(f"test accuracy {report.accuracy:.4f} on {report.n} photos")
for name, metrics in report.per_class.items():
    print(f"  {name}: precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}")
folder = report.write()
print(f"report: {folder}/report.md")
