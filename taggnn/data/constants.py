"""Normalisation statistics and resize ratios used by the transforms and the weights entries.

* IG-65M R(2+1)D-34 and torchvision's video ResNets were trained on frames normalised with
  the Kinetics statistics below;
* pytorchvideo's model zoo (Slow, I3D, CSN, X3D) and the authors' TAG-Head code use
  0.45 / 0.225 on every channel;
* the paper resizes the short side to 126 for 112 crops (ratio 126/112); the authors' code
  decodes at short side 128 (ratio 128/112).
"""
IG65M_MEAN = (0.43216, 0.394666, 0.37645)
IG65M_STD = (0.22803, 0.22145, 0.216989)
KINETICS_MEAN = IG65M_MEAN  # torchvision video ResNets use the same statistics
KINETICS_STD = IG65M_STD
SLOWFAST_MEAN = (0.45, 0.45, 0.45)
SLOWFAST_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS = {
    "ig65m": (IG65M_MEAN, IG65M_STD),
    "kinetics": (KINETICS_MEAN, KINETICS_STD),
    "slowfast": (SLOWFAST_MEAN, SLOWFAST_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

#: Short side / crop size of each transform style.
RESIZE_RATIOS = {"paper": 126 / 112, "authors": 128 / 112}
STYLES = tuple(RESIZE_RATIOS)

#: What a dataset does with a video it cannot read: stop, or leave it out and count it.
ON_ERROR = ("raise", "skip")
#: Spatial crops per view: the centre (1), or start / centre / end along the long side (3).
CROP_COUNTS = (1, 3)
