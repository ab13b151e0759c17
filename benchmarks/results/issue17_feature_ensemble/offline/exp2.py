from heads import *
import heads
res = torch.load("/tmp/fe_exp/gravel.pt", weights_only=False)
for pad in [False, True]:
    heads.POOL = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=pad)
    tr = member(res, "l0", "train"); te = member(res, "l0", "test")
    a = knn(tr, te)
    print(pad, "bilinear", fmt(metrics(res, a)))
    amap = BLUR(F.interpolate(a, size=(128, 128)))
    print(pad, "nearest", roc_auc_score(res["masks"].flatten().numpy(), amap.flatten().numpy()))
