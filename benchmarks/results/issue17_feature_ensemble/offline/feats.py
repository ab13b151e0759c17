"""Cache features of realistic sets for lite0/1/2 (blocks.2, blocks.4, plus blocks.1), 128 px."""
import os, sys, glob, torch, numpy as np
from torchvision.io import read_image
import torch.nn.functional as F
from anomalib.models.components import TimmFeatureExtractor
torch.set_num_threads(1)
ROOT = "/work/main/datasets/pixelrefine_realistic"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
def load(paths, mask=False):
    out = []
    for p in paths:
        im = read_image(p).float() / 255
        if not mask and im.shape[0] == 1: im = im.expand(3, -1, -1)
        if mask: im = im[:1]
        out.append(F.interpolate(im[None], size=(128, 128), mode="bilinear" if not mask else "nearest", antialias=not mask)[0])
    return torch.stack(out)
for cat in sys.argv[1:]:
    d = f"{ROOT}/{cat}"
    train = sorted(glob.glob(f"{d}/train/good/*.png"))
    rng = np.random.default_rng(0); perm = rng.permutation(len(train)); train = [train[i] for i in perm[:30]]
    good = sorted(glob.glob(f"{d}/test/good/*.png"))
    bad = sorted(p for p in glob.glob(f"{d}/test/*/*.png") if "/good/" not in p)
    imgs = {"train": load(train), "test": load(good + bad)}
    labels = torch.tensor([0] * len(good) + [1] * len(bad))
    if os.path.isdir(f"{d}/ground_truth"):
        masks = [torch.zeros(1, 128, 128)] * len(good)
        masks = torch.cat([torch.stack(masks), load([p.replace("/test/", "/ground_truth/").replace(".png", "_mask.png") for p in bad], mask=True)])
        masks = (masks > 0.5).float()
    else:
        masks = None
    kinds = ["good"] * len(good) + [p.split("/")[-2] for p in bad]
    res = {"labels": labels, "masks": masks, "kinds": kinds, "images": imgs}
    for bb in ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]:
        fe = TimmFeatureExtractor(bb, layers=["blocks.1", "blocks.2", "blocks.4"], pre_trained=True).eval()
        with torch.no_grad():
            for split, x in imgs.items():
                f = fe((x - MEAN) / STD)
                res[f"{bb}/{split}"] = {k: v.clone() for k, v in f.items()}
    torch.save(res, f"/tmp/fe_exp/{cat}.pt")
    print(cat, {k: v.shape for k, v in res[f'tf_efficientnet_lite0/test'].items()}, len(bad))
