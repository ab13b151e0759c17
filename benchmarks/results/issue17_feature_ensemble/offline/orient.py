import sys, torch
sys.path.insert(0, "/work/wt-fe/tests")
from test_feature_ensemble import _textures, RESNET_A, RESNET_B, FeatureEnsembleModel, roc_auc_score
generator = torch.Generator().manual_seed(0); torch.manual_seed(0)
train, test = _textures(12, generator), _textures(4, generator)
mask = torch.zeros(4, 1, 48, 48, dtype=torch.bool); mask[:, :, 18:28, 14:24] = True
test = torch.where(mask, torch.tensor(0.02), test)
for noise, steps, scales in [(1.0, 150, 1), (1.0, 600, 1), (2.0, 150, 1), (1.0, 150, 8)]:
    torch.manual_seed(0)
    model = FeatureEnsembleModel([RESNET_A, RESNET_B], head="discriminator", hidden=64, sigma=1.0, noise_std=noise).eval()
    model.fit_transforms([train[:6], train[6:]])
    feats = model.transformed_features(train)
    with torch.no_grad():
        tf = model.transformed_features(test)[0]
        print("dist of defect feats from origin", tf.permute(0,2,3,1)[torch.nn.functional.interpolate(mask.float(), size=tf.shape[-2:]).bool()[:,0]].norm(dim=1).mean().item(), "normal", feats[0].norm(dim=1).mean().item())
    opt = torch.optim.Adam(model.heads.parameters(), lr=1e-3); model.heads.train()
    for _ in range(steps):
        head = model.heads[0]
        true = head.adapt(feats[0])
        std = noise * torch.exp2(torch.rand(true.shape[0], 1, *true.shape[2:]) * torch.log2(torch.tensor(float(scales))))
        fake = true + torch.randn_like(true) * std
        s = head.score(torch.cat([true, fake])); ts, fs = s.split(true.shape[0])
        loss = model.loss(ts, fs); opt.zero_grad(); loss.backward(); opt.step()
    model.heads.eval()
    with torch.no_grad(): am = model(test).anomaly_map
    print(noise, steps, scales, am[mask].mean().item(), am[~mask].mean().item(), roc_auc_score(mask.flatten().numpy(), am.flatten().numpy()))
