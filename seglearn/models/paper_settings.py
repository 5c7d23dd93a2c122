"""What each paper's training recipe was, per FULL row: ``PAPER_SETTINGS[row][setting] = (paper's value, why
seglearn's differs)``; :mod:`seglearn.recipe_table` sets them beside the registry's recipes. A setting left out is
one the paper does not state. The papers' values are from their experimental sections (and, where said, their
released solvers); "why" is empty only where the value is the same as ours (the table then reads "same")."""

from __future__ import annotations

SETTINGS = ("data", "init", "crop", "batch", "optimizer", "lr", "schedule", "length", "weight decay", "augmentation",
            "model")  # fmt: skip

_CAMVID = "the series trains every FULL row on CamVid, one dataset for the comparison; the *-voc row trains the paper's"
_SHORT = "a ~15-40x shorter run for CamVid's 367 images, at a rate that reaches a good model in it"
_BATCH8 = "batch 8 at 360x480 for every CamVid row: one GPU's memory for the largest model"
_ONE_RUN = "poly, the one decay every CamVid row uses, so that rows differ only in the model"

_FCN = {
    "data": ("PASCAL VOC 2011 train, SBD labels (8,498 images)", _CAMVID),
    "init": ("vgg16, ImageNet", "torchvision's vgg16 (the paper: Caffe's VGG16)"),
    "crop": ("whole images (up to 500x500)", "whole CamVid frames, scaled and flipped"),
    "batch": ("1 (unnormalised loss; FCN-32s: 20)", _BATCH8),
    "optimizer": (
        "SGD, momentum 0.99 (FCN-32s: 0.9)",
        "momentum 0.9 with batch 8 instead of 0.99 at batch 1: the same effective averaging over ~100 images",
    ),
    "lr": ("1e-4 (1e-10 on the unnormalised loss at batch 1), biases 2x", "the mean loss over pixels and a batch"),
    "schedule": ("fixed", _ONE_RUN),
    "length": ("not stated in iterations (FCN-32s: 3 days, then 1 day each for 16s and 8s)", _SHORT),
    "weight decay": ("0.0005", ""),
    "augmentation": ("none (random mirroring and jittering gave no gain)", "CamVid's 367 frames overfit without it"),
    "model": (
        "trained in stages: 32s, then 16s, then 8s",
        "one run, all three scales together (the PAMI version trains FCN-8s at once too)",
    ),
}
_DEEPLAB1 = {
    "data": ("VOC 2012 trainaug (10,582 images)", ""),
    "init": ("vgg16, ImageNet", ""),
    "crop": ("306x306 (the released LargeFOV prototxt)", "321x321 as DeepLab-v2's code: (321 - 1) / 8 = 40 cells"),
    "batch": ("20", ""),
    "optimizer": ("SGD, momentum 0.9", ""),
    "lr": ("0.001, head.fc8 x10", ""),
    "schedule": ("x0.1 every 2,000 iterations", ""),
    "length": ("6,000 iterations", "whole epochs: 11 of 529 batches"),
    "weight decay": ("0.0005", ""),
    "augmentation": ("random crop and mirror", "plus random scale 0.5-2, the preset every row shares"),
    "model": ("as built", ""),
}
_DEEPLAB3 = {
    "data": ("VOC 2012 trainaug (10,582 images)", ""),
    "init": ("resnet101, ImageNet", ""),
    "crop": ("513x513", ""),
    "batch": ("16", ""),
    "optimizer": ("SGD, momentum 0.9", ""),
    "lr": ("0.007", ""),
    "schedule": ("poly, power 0.9", ""),
    "length": (
        "30,000 iterations, then OS8 fine-tuning on trainval with frozen BN",
        "whole epochs (45 of 661 "
        "batches); the OS8 fine-tuning is set_output_stride(8) and a second fit, not part of the recipe",
    ),
    "weight decay": ("not stated", ""),
    "augmentation": ("random scale 0.5-2, flip", "plus the crop"),
    "model": ("OS 16, multi-grid (1, 2, 4), ASPP + image pooling, 1x1 head", "the same: deeplabv3's defaults"),
}
_ENCNET = {
    "data": ("VOC 2012 trainaug (10,582 images)", ""),
    "init": ("resnet101, ImageNet", ""),
    "crop": ("480x480", ""),
    "batch": ("16", ""),
    "optimizer": ("SGD, momentum 0.9", ""),
    "lr": ("0.001", ""),
    "schedule": ("poly, power 0.9", ""),
    "length": ("50 epochs", "the same 50 epochs, counted in iterations"),
    "weight decay": ("0.0001", ""),
    "augmentation": ("scale 0.5-2, crop, flip, rotation up to 10 deg", ""),
    "model": ("aux head, SE-loss 0.2; the 85.9 test mIoU also pretrains on COCO", "no COCO pre-training"),
}
_PSPNET = {
    "data": ("VOC 2012 trainaug (10,582 images)", ""),
    "init": (
        "resnet101, ImageNet",
        "torchvision's ResNet-101 (7x7 stem) for its weights; the paper's has a 3-conv stem",
    ),
    "crop": ("473x473", ""),
    "batch": ("16", ""),
    "optimizer": ("SGD, momentum 0.9", ""),
    "lr": ("0.01", ""),
    "schedule": ("poly, power 0.9", ""),
    "length": ("30,000 iterations", "whole epochs: 45 of 661 batches"),
    "weight decay": ("0.0001", ""),
    "augmentation": ("scale 0.5-2, rotation -10..10 deg, Gaussian blur, flip", "no rotation or blur"),
    "model": ("aux head", ""),
}
_REFINENET = {
    "data": ("VOC 2012 trainaug (10,582 images)", ""),
    "init": ("resnet101, ImageNet", ""),
    "crop": ("400x400", ""),
    "batch": ("1", "batch 8 at the paper's rate scaled linearly, so one epoch is 8x fewer steps"),
    "optimizer": ("SGD, momentum 0.9", ""),
    "lr": ("0.0005, backbone x0.1", "0.005 for batch 8 (0.0005 x 8, rounded up)"),
    "schedule": ("steps by hand (not stated when)", "poly, a schedule one can state"),
    "length": ("not stated", ""),
    "weight decay": ("0.0005", ""),
    "augmentation": ("scale, crop, flip", "scales 0.5-2, the preset every row shares"),
    "model": ("as built", ""),
}


def _camvid(paper: dict[str, tuple[str, str]], **changes: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """A CamVid row of a paper whose recipe is ``paper``'s (on its own dataset): every setting with its reason
    updated for the CamVid recipe (the shorter schedule, batch 8 at 360x480) unless ``changes`` says otherwise."""
    row = {k: (v, why or _CAMVID if k == "data" else why) for k, (v, why) in paper.items()}
    row.update(crop=(paper["crop"][0], "whole 360x480 CamVid frames after a random scale 0.5-2"),
               batch=(paper["batch"][0], _BATCH8), length=(paper["length"][0], _SHORT))  # fmt: skip
    row.update(changes)
    return row


PAPER_SETTINGS: dict[str, dict[str, tuple[str, str]]] = {
    "fcn8s-voc": {
        **_FCN,
        "data": (
            _FCN["data"][0],
            "trainaug: SBD's labels too, with VOC 2012 val left out so val "
            "scores are on unseen images (FCN's SBD train overlaps VOC 2012 val)",
        ),
        "crop": (_FCN["crop"][0], "320x320 crops: a batch needs one size"),
        "batch": ("20 (FCN-32s; FCN-8s: 1)", "20 throughout with the mean loss"),
        "optimizer": (_FCN["optimizer"][0], "momentum 0.9 at batch 20, FCN-32s's setting, for every stage"),
        "augmentation": (_FCN["augmentation"][0], "scale, crop and flip: the preset every row shares"),
        "schedule": ("fixed", ""),
        "length": (_FCN["length"][0], "50 epochs"),
    },  # fmt: skip
    "fcn8s": _camvid(
        _FCN, lr=(_FCN["lr"][0], "0.001 with poly decay for a ~20x shorter run; the paper's fixed 1e-4 is untried here")
    ),  # fmt: skip
    "deeplabv1-voc": _DEEPLAB1,
    "deeplabv1": _camvid(
        _DEEPLAB1,
        lr=("0.001, head.fc8 x10", "one rate for all layers, poly decay"),
        schedule=(_DEEPLAB1["schedule"][0], _ONE_RUN),
    ),  # fmt: skip
    "deeplabv3-voc": _DEEPLAB3,
    "deeplabv3": _camvid(
        _DEEPLAB3,
        init=("resnet101, ImageNet", "ResNet-50: a CamVid row fits one GPU at batch 8"),
        lr=("0.007", "0.01 at batch 8 for the shorter run"),
    ),  # fmt: skip
    "encnet-voc": _ENCNET,
    "encnet": _camvid(
        _ENCNET,
        init=("resnet101, ImageNet", "ResNet-50, as the paper's ablations"),
        lr=("0.001", "0.01 for the shorter run, as every ResNet row; the paper's 0.001 is untried here"),
        augmentation=(_ENCNET["augmentation"][0], "no rotation on CamVid's upright road scenes"),
    ),
    "pspnet-voc": _PSPNET,
    "pspnet": _camvid(
        _PSPNET,
        init=("resnet101, ImageNet", "torchvision's ResNet-50 (7x7 stem) for its weights"),
        augmentation=(_PSPNET["augmentation"][0], "no rotation or blur"),
    ),
    "refinenet-voc": _REFINENET,
    "refinenet": _camvid(_REFINENET),
    "fcn-r50": {  # no paper trains FCN on a ResNet: torchvision's recipe (references/segmentation) is the reference
        "data": ("COCO 2017 train, VOC's 20 classes (torchvision's recipe)", _CAMVID),
        "init": ("resnet50, ImageNet", ""),
        "crop": ("480x480", "whole 360x480 frames"),
        "batch": ("32 (8 GPUs x 4)", _BATCH8),
        "optimizer": ("SGD, momentum 0.9", ""),
        "lr": ("0.02", "0.01 at batch 8"),
        "schedule": ("poly, power 0.9", ""),
        "length": ("30 epochs of COCO", _SHORT),
        "weight decay": ("0.0001", ""),
        "augmentation": ("scale 0.5-2, crop, flip", ""),
        "model": ("aux head", ""),
    },
    "segnet": {
        "data": ("CamVid train (367 images)", ""),
        "init": (
            "vgg16, ImageNet",
            "vgg16_bn: SegNet puts BN after every conv, and torchvision has VGG16-BN's weights",
        ),
        "crop": ("360x480", ""),
        "batch": ("12", _BATCH8),
        "optimizer": ("SGD, momentum 0.9", ""),
        "lr": ("0.1", "0.01 with poly decay for a shorter run; the paper's 0.1 is untried here"),
        "schedule": ("fixed", _ONE_RUN),
        "length": ("until the training loss converged", _SHORT),
        "augmentation": ("not stated", "the preset every row shares"),
        "model": ("median class weights", "plain cross-entropy; segnet-basic and unet-mfb show the weights"),
    },
    "segnet-basic": {
        "data": ("CamVid train (367 images)", ""),
        "init": ("its own encoder, from scratch", ""),
        "crop": ("360x480", ""),
        "batch": ("12", _BATCH8),
        "optimizer": ("SGD, momentum 0.9", ""),
        "lr": ("0.1", "0.01 with poly decay for a shorter run; the paper's 0.1 is untried here"),
        "schedule": ("fixed", _ONE_RUN),
        "length": ("until the training loss converged", _SHORT),
        "augmentation": ("not stated", "the preset every row shares"),
        "model": ("median class weights", ""),
    },
    "unet": {
        "data": ("ISBI 2012 EM stacks (30 images)", _CAMVID),
        "init": ("its own encoder, from scratch", ""),
        "crop": ("572x572 tiles (overlap-tile)", "whole frames, padded inside the model"),
        "batch": ("1 (large tiles)", _BATCH8),
        "optimizer": ("SGD, momentum 0.99", "momentum 0.9 at batch 8, as the other rows"),
        "lr": ("not stated", "0.01, as every BatchNorm row"),
        "schedule": ("not stated", _ONE_RUN),
        "length": ("not stated", _SHORT),
        "augmentation": (
            "shifts, rotations, elastic deformations",
            "no elastic deformation: road scenes are not tissue",
        ),
        "model": (
            "pixel-wise weight map (class balance + border term)",
            "plain cross-entropy; unet-mfb weights classes, no border term (CamVid has no touching cells)",
        ),
    },
    "unet-mfb": {},  # filled below: unet's, with the class weights of this row
    "upernet": {
        "data": ("ADE20K train (20,210 images)", _CAMVID),
        "init": ("resnet50, ImageNet", ""),
        "crop": ("short side 300-600, whole image", "whole 360x480 frames after a random scale 0.5-2"),
        "batch": ("16 (8 GPUs x 2)", _BATCH8),
        "optimizer": ("SGD, momentum 0.9", ""),
        "lr": ("0.02", "0.01 at batch 8"),
        "schedule": ("poly, power 0.9", ""),
        "length": ("not stated in these terms", _SHORT),
        "weight decay": ("0.0001", ""),
        "augmentation": ("random short-side resize, flip", "the preset every row shares"),
        "model": (
            "PPM + FPN at 256 channels (the authors' code; mmsegmentation: 512)",
            "512, as mmsegmentation, plus its aux head",
        ),
    },
    "enet": {
        "data": ("CamVid train (367 images)", ""),
        "init": ("its own encoder, from scratch", ""),
        "crop": ("360x480", ""),
        "batch": ("10", _BATCH8),
        "optimizer": ("Adam", "AdamW: decoupled weight decay, weaker than Adam's L2 at the same value"),
        "lr": ("0.0005", ""),
        "schedule": ("not stated", _ONE_RUN),
        "length": ("not stated", "300 epochs, as davidtvs/PyTorch-ENet's CamVid run"),
        "weight decay": ("0.0002", ""),
        "augmentation": ("not stated", "the preset every row shares"),
        "model": ("enet class weights; the encoder trained first, then the decoder", "end to end in one run"),
    },
    "fcdensenet103": {
        "data": ("CamVid train (367 images)", ""),
        "init": ("its own encoder, from scratch", ""),
        "crop": ("224x224, then fine-tuned on whole 360x480 frames", "whole frames throughout"),
        "batch": ("not stated", _BATCH8),
        "optimizer": ("RMSprop", "AdamW, the adaptive optimizer the recipes have"),
        "lr": ("0.001", ""),
        "schedule": ("x0.995 every epoch", _ONE_RUN),
        "length": ("until val stopped improving (patience 100 epochs)", "a fixed 150 epochs: val is the test here"),
        "weight decay": ("0.0001", ""),
        "augmentation": ("crop, flip", "plus random scale 0.5-2"),
        "model": ("as built", ""),
    },
    "linknet": {
        "data": ("CamVid train (367 images)", ""),
        "init": ("resnet18, ImageNet", ""),
        "crop": ("768x512 frames", "360x480, the size every row trains at"),
        "batch": ("not stated", _BATCH8),
        "optimizer": ("RMSprop", "AdamW, the adaptive optimizer the recipes have"),
        "lr": ("0.0005", ""),
        "schedule": ("not stated", _ONE_RUN),
        "length": ("not stated", _SHORT),
        "augmentation": ("not stated", "the preset every row shares"),
        "model": ("enet class weights", ""),
    },
    "gfrnet": {
        "data": ("CamVid train (367 images)", ""),
        "init": ("vgg16_bn, ImageNet", ""),
        "crop": ("360x480", ""),
        "batch": ("6 (the released solver)", _BATCH8),
        "optimizer": ("SGD, momentum 0.9", ""),
        "lr": ("0.001", "0.01 for a ~40x shorter run"),
        "schedule": ("x0.1 every 50,000 iterations", _ONE_RUN),
        "length": ("150,000 iterations", _SHORT),
        "weight decay": ("0.0005", ""),
        "augmentation": ("not stated", "the preset every row shares"),
        "model": ("the six stage losses summed", 'SegLoss sums the CE of the "side" outputs too'),
    },
}
PAPER_SETTINGS["unet-mfb"] = {**PAPER_SETTINGS["unet"], "model": (PAPER_SETTINGS["unet"]["model"][0], "median "
                              "class weights (SegNet's), no border term: CamVid has no touching cells")}  # fmt: skip
