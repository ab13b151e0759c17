import sys, torch, numpy as np, math, time
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from anomalib.models.components import GaussianBlur2d
sys.path.insert(0, "/work/wt-fe")
from anomalib_pixelrefine.models.image.feature_ensemble.pca import ChannelPCA
torch.set_num_threads(1)
BLUR = GaussianBlur2d(sigma=4.0, kernel_size=2 * math.ceil(12) + 1)
POOL = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
BB = {"l0": "tf_efficientnet_lite0", "l1": "tf_efficientnet_lite1", "l2": "tf_efficientnet_lite2"}

def member(res, m, split, layers=("blocks.2", "blocks.4")):
    f = res[f"{BB[m]}/{split}"]
    maps = [POOL(f[l]) for l in layers]
    size = maps[0].shape[-2:]
    return torch.cat([maps[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in maps[1:]], 1)

def knn(train, test):
    c = train.shape[1]
    bank = train.permute(0, 2, 3, 1).reshape(-1, c)
    q = test.permute(0, 2, 3, 1).reshape(-1, c)
    d = torch.cdist(q, bank).min(1).values
    return d.view(test.shape[0], 1, *test.shape[-2:])

def metrics(res, amap):
    amap = BLUR(F.interpolate(amap, size=(128, 128), mode="bilinear", align_corners=False))
    score = amap.flatten(1).amax(1)
    out = {"img": roc_auc_score(res["labels"].numpy(), score.numpy())}
    if res["masks"] is not None:
        out["pix"] = roc_auc_score(res["masks"].flatten().numpy(), amap.flatten().numpy())
    return out

def fmt(d): return " ".join(f"{k}={v:.3f}" for k, v in d.items())
