from heads import *
from anomalib_pixelrefine.models.image.feature_ensemble.torch_model import SimpleNetHead
from anomalib_pixelrefine.models.image.feature_ensemble.loss import SimpleNetLoss
cat = sys.argv[1]
res = torch.load(f"/tmp/fe_exp/{cat}.pt", weights_only=False)
combo = ("l0", "l1")
tr = torch.cat([member(res, m, "train") for m in combo], 1); te = torch.cat([member(res, m, "test") for m in combo], 1)
pca = ChannelPCA(0.95, groups=[member(res, m, "train").shape[1] for m in combo]); pca.update(tr); pca.fit()
trp, tep = pca(tr), pca(te)
print(cat, "knn-pca", fmt(metrics(res, knn(trp, tep))), flush=True)
loss_fn = SimpleNetLoss(0.5)
for adaptor in [True, False]:
  for noise in [0.1, 0.5, 1.0]:
    torch.manual_seed(0)
    head = SimpleNetHead(trp.shape[1], adaptor=adaptor, hidden=256)
    groups = [{"params": head.discriminator.parameters(), "lr": 1e-3, "weight_decay": 1e-5}]
    if adaptor: groups.append({"params": head.adaptor.parameters(), "lr": 5e-4})
    opt = torch.optim.Adam(groups)
    t = time.time()
    for step in range(400):  # 8 epochs x 2 batches x 10 steps = 160 in the benchmark; here 400
        idx = torch.randint(0, trp.shape[0], (16,))
        true = head.adapt(trp[idx]); fake = true + torch.randn_like(true) * noise
        s = head.score(torch.cat([true, fake])); ts, fs = s.split(16)
        loss = loss_fn(ts, fs); opt.zero_grad(); loss.backward(); opt.step()
        if step in (159, 399):
            head.eval()
            with torch.no_grad(): amap = -head.score(head.adapt(tep))
            head.train()
            print(cat, f"disc adaptor={adaptor} noise={noise} steps={step+1}", fmt(metrics(res, amap)), f"loss={loss.item():.3f}", flush=True)
