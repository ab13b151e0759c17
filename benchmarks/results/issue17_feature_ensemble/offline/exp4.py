from heads import *
import heads
from anomalib_pixelrefine.models.image.feature_ensemble.torch_model import SimpleNetHead
from anomalib_pixelrefine.models.image.feature_ensemble.loss import SimpleNetLoss
heads.POOL = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=True)
loss_fn = SimpleNetLoss(0.5)
def disc(trp, tep, noise=1.0, steps=300):
    torch.manual_seed(0)
    head = SimpleNetHead(trp.shape[1], adaptor=False, hidden=256)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-5)
    for step in range(steps):
        idx = torch.randint(0, trp.shape[0], (16,))
        true = trp[idx]; fake = true + torch.randn_like(true) * noise
        s = head.score(torch.cat([true, fake])); ts, fs = s.split(16)
        loss = loss_fn(ts, fs); opt.zero_grad(); loss.backward(); opt.step()
    head.eval()
    with torch.no_grad(): return -head.score(tep)
for cat in sys.argv[1:]:
    res = torch.load(f"/tmp/fe_exp/{cat}.pt", weights_only=False)
    tr = {m: member(res, m, "train") for m in BB}; te = {m: member(res, m, "test") for m in BB}
    for m in BB:
        print(cat, "knn", m, fmt(metrics(res, knn(tr[m], te[m]))), flush=True)
    for combo in [("l0", "l1"), ("l0", "l1", "l2")]:
        trc = torch.cat([tr[m] for m in combo], 1); tec = torch.cat([te[m] for m in combo], 1)
        for nc in [0.95, 1.0]:
            pca = ChannelPCA(nc, reduce=nc < 1.0, groups=[tr[m].shape[1] for m in combo]); pca.update(trc); pca.fit()
            trp, tep = pca(trc), pca(tec)
            print(cat, f"knn pca{nc}", "+".join(combo), fmt(metrics(res, knn(trp, tep))), flush=True)
            print(cat, f"disc pca{nc}", "+".join(combo), fmt(metrics(res, disc(trp, tep))), flush=True)
