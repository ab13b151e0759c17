from heads import *
for cat in sys.argv[1:]:
    res = torch.load(f"/tmp/fe_exp/{cat}.pt", weights_only=False)
    tr = {m: member(res, m, "train") for m in BB}; te = {m: member(res, m, "test") for m in BB}
    for m in BB:
        print(cat, "knn", m, fmt(metrics(res, knn(tr[m], te[m]))))
    # ensemble: per member unit mean channel variance then concat
    def norm(m):
        mu = tr[m].mean((0, 2, 3), keepdim=True); s = tr[m].var((0, 2, 3)).mean().sqrt()
        return (tr[m] - mu) / s, (te[m] - mu) / s
    for combo in [("l0", "l1"), ("l0", "l2"), ("l1", "l2"), ("l0", "l1", "l2")]:
        a = [norm(m) for m in combo]
        trc = torch.cat([x[0] for x in a], 1); tec = torch.cat([x[1] for x in a], 1)
        print(cat, "knn-concat-norm", "+".join(combo), fmt(metrics(res, knn(trc, tec))))
        # raw concat
        print(cat, "knn-concat-raw", "+".join(combo), fmt(metrics(res, knn(torch.cat([tr[m] for m in combo], 1), torch.cat([te[m] for m in combo], 1)))))
        # PCA global
        for nc in [0.95, 0.99]:
            pca = ChannelPCA(nc, groups=[tr[m].shape[1] for m in combo])
            pca.update(torch.cat([tr[m] for m in combo], 1)); pca.fit()
            print(cat, f"knn-pca{nc}", "+".join(combo), pca.out_channels, fmt(metrics(res, knn(pca(torch.cat([tr[m] for m in combo], 1)), pca(torch.cat([te[m] for m in combo], 1))))))
        # score-level mean of per-member z-scored kNN maps
        maps = []
        for m in combo:
            # normalise by the train leave-in score stats: use test map / median of train-bank NN distances (approx by 2nd NN)
            maps.append(knn(tr[m], te[m]))
        print(cat, "knn-scoremean-raw", "+".join(combo), fmt(metrics(res, sum(maps))))
