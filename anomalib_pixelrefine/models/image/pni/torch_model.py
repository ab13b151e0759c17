"""PyTorch model of PNI: position and neighbourhood information on top of PatchCore features.

Reference: Bae, Lee, Kim, "PNI: Industrial Anomaly Detection using Position and Neighborhood Information", ICCV 2023.

Per backbone, :class:`PniScorer` holds

* the *embedding coreset* ``C_emb`` (k-center greedy, ``coreset_ratio`` of all training patches) and the
  *distribution coreset* ``C_dist`` (the first ``distribution_size`` entries of the same greedy order), plus the map
  ``emb_to_dist`` from every embedding entry to its nearest distribution entry;
* the neighbourhood MLP ``p(c_dist | N_p(x))`` (eq. 7) and the position histograms ``p(c_dist | x)`` (Algorithm 1);
* the scoring of eq. (4)-(8): with ``T_tau`` thresholding (``tau = 1 / (2 |C_dist|)``) a patch is compared only with
  the embedding entries whose distribution class is allowed; the distance to the nearest allowed entry is
  ``-log p`` up to a constant (``lambda = 1``). N and P are joined as in eq. (6), the mean of the two probabilities
  thresholded once (``combine="probability"``), or as in the public code, the mean of the two masked distances
  (``combine="score"``).

Index bookkeeping (the public code mixes these): ``C_dist`` entries are identified by their *rank* ``0..|C_dist|-1`` in
the greedy order, which is also the MLP's class id and the histogram's bin; embedding entries are identified by their
row in ``embedding_coreset``; ``emb_to_dist[row]`` is a rank. Candidates are enumerated class by class through a CSR
layout (``class_members`` sorted by class, ``class_offsets``), so each patch is only compared with allowed entries.

:class:`PniModel` combines one scorer per backbone (score-level ensemble, min-max normalised with training
statistics) and the optional pixelwise refinement network.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin, TimmFeatureExtractor
from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator
from torch import nn

from anomalib_pixelrefine.models.components import greedy_coreset, input_gradients, is_exporting

from .refinement import RefinementNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PAIR_CHUNK = 1 << 16  # (patch, coreset entry) pairs evaluated at once
_NN_CHUNK = 1024  # query rows per dense nearest-neighbour block


def nearest_neighbour(queries: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest neighbour (Euclidean) of each query row in ``bank``, in row chunks.

    Args:
        queries: ``(P, D)``.
        bank: ``(M, D)``, ``M >= 1``.

    Returns:
        ``(distance (P,), index (P,))``.
    """
    dists, idxs = [], []
    bank_sq = bank.pow(2).sum(1)
    if is_exporting():  # static graph: one block (the row count is symbolic)
        value, index = (queries.pow(2).sum(1, keepdim=True) - 2 * queries @ bank.T + bank_sq).min(1)
        return value.clamp_min(0).sqrt(), index
    for start in range(0, queries.shape[0], _NN_CHUNK):
        chunk = queries[start : start + _NN_CHUNK]
        sq = chunk.pow(2).sum(1, keepdim=True) - 2 * chunk @ bank.T + bank_sq
        value, index = sq.min(1)
        dists.append(value.clamp_min(0).sqrt())
        idxs.append(index)
    if not dists:
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(idxs)


def neighbourhood_inputs(
    padded: torch.Tensor,
    image_idx: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """Concatenate the features of the ``window x window`` neighbourhood of each patch, without the centre (eq. 7).

    Args:
        padded: Feature maps ``(N, C, h + 2r, w + 2r)`` zero-padded by ``r = window // 2``.
        image_idx: ``(P,)`` image of each patch.
        row: ``(P,)`` row of each patch (unpadded coordinates).
        col: ``(P,)`` column of each patch.
        window: Odd window side ``p``.

    Returns:
        ``(P, (p * p - 1) * C)``.
    """
    offsets = torch.arange(window, device=padded.device)
    rows = row[:, None, None] + offsets[None, :, None]
    cols = col[:, None, None] + offsets[None, None, :]
    patches = padded[image_idx[:, None, None], :, rows, cols]  # (P, p, p, C): advanced dims come first
    patches = patches.reshape(patches.shape[0], window * window, -1)
    centre = (window * window) // 2
    patches = torch.cat([patches[:, :centre], patches[:, centre + 1 :]], dim=1)
    return patches.reshape(patches.shape[0], -1)


def position_histogram(targets: torch.Tensor, n_classes: int, window: int) -> torch.Tensor:
    """Algorithm 1 with the ``p x p`` accumulation, vectorised.

    Every training patch at ``(i, j)`` with nearest distribution entry ``c`` adds one count to ``hist[i', j', c]`` for
    all ``|i' - i|, |j' - j| <= p // 2``; counts are then normalised per position.

    Args:
        targets: ``(N, h, w)`` long, nearest distribution-coreset rank of every training patch.
        n_classes: ``|C_dist|``.
        window: Odd accumulation window ``p``.

    Returns:
        ``(h * w, n_classes)`` probabilities; every row sums to one.
    """
    _, height, width = targets.shape
    positions = torch.arange(height * width, device=targets.device).expand(targets.shape[0], -1)
    flat = targets.reshape(targets.shape[0], -1) * (height * width) + positions
    counts = torch.bincount(flat.reshape(-1), minlength=n_classes * height * width).float()
    counts = counts.reshape(1, n_classes, height, width)
    # Box sum over the p x p window (zero padded) = every patch voting for its neighbours' positions.
    summed = F.avg_pool2d(counts, window, stride=1, padding=window // 2, count_include_pad=True) * window * window
    summed = summed[0].reshape(n_classes, -1).T
    return summed / summed.sum(1, keepdim=True).clamp_min(1e-12)


class NeighbourhoodMLP(nn.Module):
    """MLP ``p(c_dist | N_p(x))``: ``num_layers`` linear layers, BatchNorm + ReLU (+ dropout) between them.

    Args:
        in_features: Size of the concatenated neighbourhood features.
        n_classes: Output logits (``distribution_size``).
        num_layers: Number of linear layers (``>= 1``; the paper uses 10).
        width: Hidden width (the paper uses 2048).
        dropout: Dropout after every hidden layer.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        num_layers: int = 3,
        width: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1 or width < 1:
            msg = f"mlp_layers and mlp_width must be >= 1, got {num_layers} and {width}."
            raise ValueError(msg)
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(num_layers - 1):
            layers += [nn.Linear(size, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            size = width
        layers.append(nn.Linear(size, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(P, n_classes)``."""
        return self.net(x)


class PniScorer(DynamicBufferMixin):
    """One backbone's PNI scorer: features, coresets, neighbourhood MLP, position histograms, masked NN scoring.

    Args:
        backbone: timm backbone name.
        layers: Feature layers (PatchCore: ``layer2``, ``layer3``).
        pre_trained: Load ImageNet weights through timm (needs the network or a Hugging Face cache).
        weights_path: Local backbone weights file (``state_dict`` of the timm model); overrides ``pre_trained``.
        coreset_ratio: Fraction of training patches in the embedding coreset.
        distribution_size: ``|C_dist|`` upper bound (capped at the embedding-coreset size).
        window: Neighbourhood / histogram window ``p`` (odd).
        mlp_layers: Linear layers of the MLP.
        mlp_width: Hidden width of the MLP.
        mlp_dropout: Dropout of the MLP.
        mlp_channels: Channels of the MLP input features (adaptive average pooling over channels, like PatchCore's
            dimension reduction); ``None`` keeps all backbone channels.
        temperature: Softmax temperature ``T`` of the MLP.
        use_neighbourhood: Use the neighbourhood term ``N``.
        use_position: Use the position term ``P``.
        projection_dim: Dimension of the random projection of the greedy coreset.
        seed: Coreset seed.
        search: Masked search strategy, see :meth:`masked_nearest`.
        sparse_density: Largest allowed-pair fraction for which ``search="auto"`` uses the sparse search (default:
            the measured CPU crossover, about 0.5 % of the pairs for a 1k-entry coreset of 384-d features).
        border: Width (in patches) of the outer ring whose N/P scores are replaced by their inner neighbours'
            (edge padding). The public PNI code uses 1 (there the 3x3 feature pooling and the MLP window see zero
            padding and the position histograms get fewer votes); the paper does not mention it and the default 0
            keeps the border (measured trade-off: benchmarks/results/pni.md in git history). Never applied to the plain
            nearest-neighbour score (N and P off), which stays PatchCore's.
        combine: How N and P are joined when both are on. ``"probability"`` (default, the paper's eq. 6):
            ``p(c | Omega) = (p(c | N) + p(c | x)) / 2`` is thresholded once, so a class one term supports strongly
            stays allowed whatever the other says, and one masked search is run. ``"score"`` (public code): each
            term thresholds its own probabilities and the two masked distances are averaged.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool = True,
        weights_path: str | None = None,
        coreset_ratio: float = 0.01,
        distribution_size: int = 2048,
        window: int = 9,
        mlp_layers: int = 3,
        mlp_width: int = 512,
        mlp_dropout: float = 0.1,
        mlp_channels: int | None = None,
        temperature: float = 2.0,
        use_neighbourhood: bool = True,
        use_position: bool = True,
        projection_dim: int = 128,
        seed: int = 0,
        search: str = "auto",
        sparse_density: float = 0.005,
        border: int = 0,
        combine: str = "probability",
    ) -> None:
        super().__init__()
        if combine not in {"score", "probability"}:
            msg = f"combine must be 'score' (mean of the masked scores) or 'probability' (eq. 6), got {combine!r}."
            raise ValueError(msg)
        self.combine = combine
        if search not in {"auto", "sparse", "dense"}:
            msg = f"search must be 'auto', 'sparse' or 'dense', got {search!r}."
            raise ValueError(msg)
        if not 0.0 < coreset_ratio <= 1.0:
            msg = f"coreset_ratio must be in (0, 1], got {coreset_ratio}."
            raise ValueError(msg)
        if distribution_size < 1:
            msg = f"distribution_size must be >= 1, got {distribution_size}."
            raise ValueError(msg)
        if window < 1 or window % 2 == 0:
            msg = f"window must be a positive odd integer, got {window}."
            raise ValueError(msg)
        if temperature <= 0:
            msg = f"temperature must be > 0, got {temperature}."
            raise ValueError(msg)
        if border < 0:
            msg = f"border must be >= 0, got {border}."
            raise ValueError(msg)
        self.border = int(border)
        self.layers = list(layers)
        self.feature_extractor = TimmFeatureExtractor(
            backbone=backbone,
            layers=self.layers,
            pre_trained=pre_trained and weights_path is None,
        ).eval()
        if weights_path is not None:
            self._load_backbone_weights(weights_path)
        self.feature_pooler = nn.AvgPool2d(3, 1, 1)
        self.feature_dim = int(sum(self.feature_extractor.out_dims))
        self.mlp_channels = self.feature_dim if mlp_channels is None else int(mlp_channels)
        if not 1 <= self.mlp_channels <= self.feature_dim:
            msg = f"mlp_channels must be in [1, {self.feature_dim}] (backbone feature size), got {mlp_channels}."
            raise ValueError(msg)
        self.coreset_ratio = float(coreset_ratio)
        self.distribution_size = int(distribution_size)
        self.window = int(window)
        self.temperature = float(temperature)
        self.use_neighbourhood = bool(use_neighbourhood)
        self.use_position = bool(use_position)
        self.projection_dim = int(projection_dim)
        self.seed = int(seed)
        self.search = search
        self.sparse_density = float(sparse_density)
        self.last_density = float("nan")  # fraction of (patch, entry) pairs allowed in the last masked search
        self.mlp = NeighbourhoodMLP(
            (self.window**2 - 1) * self.mlp_channels, self.distribution_size, mlp_layers, mlp_width, mlp_dropout
        )

        self.embedding_coreset: torch.Tensor
        self.emb_to_dist: torch.Tensor
        self.class_members: torch.Tensor
        self.class_offsets: torch.Tensor
        self.position_hist: torch.Tensor
        self.feature_size: torch.Tensor
        self.score_range: torch.Tensor
        self.register_buffer("embedding_coreset", torch.empty(0, self.feature_dim))
        self.register_buffer("emb_to_dist", torch.empty(0, dtype=torch.long))
        self.register_buffer("class_members", torch.empty(0, dtype=torch.long))
        self.register_buffer("class_offsets", torch.zeros(1, dtype=torch.long))
        self.register_buffer("position_hist", torch.empty(0, 0))
        self.register_buffer("feature_size", torch.zeros(2, dtype=torch.long))
        self.register_buffer("score_range", torch.tensor([0.0, 1.0]))  # (lo, hi) of training scores

    # ------------------------------------------------------------------ features
    def _load_backbone_weights(self, weights_path: str) -> None:
        path = Path(weights_path)
        if not path.is_file():
            msg = f"weights_path {weights_path!r} does not exist or is not a file."
            raise FileNotFoundError(msg)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model = self.feature_extractor.feature_extractor
        own = model.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not matched:
            msg = f"weights_path {weights_path!r} has no tensor matching the backbone's parameters."
            raise ValueError(msg)
        model.load_state_dict(matched, strict=False)

    @property
    def n_dist(self) -> int:
        """Size of the distribution coreset (0 before fitting)."""
        return int(self.class_offsets.numel() - 1)

    @property
    def is_fitted(self) -> bool:
        """Whether the coresets have been built."""
        return self.embedding_coreset.shape[0] > 0

    @property
    def tau(self) -> float:
        """Threshold of eq. (5): half the uniform probability over ``C_dist``."""
        return 1.0 / (2.0 * max(self.n_dist, 1))

    def extract(self, image: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features ``(B, D, h, w)`` of ImageNet-normalised images (PatchCore's embedding)."""
        features = self.feature_extractor(image)
        features = [self.feature_pooler(features[layer]) for layer in self.layers]
        size = features[0].shape[-2:]
        features = [features[0]] + [F.interpolate(f, size=size, mode="bilinear") for f in features[1:]]
        return torch.cat(features, dim=1)

    def reduce_channels(self, features: torch.Tensor) -> torch.Tensor:
        """Channel-reduced copy ``(N, mlp_channels, h, w)`` used as MLP input."""
        if self.mlp_channels == self.feature_dim:
            return features
        n, d, h, w = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(-1, 1, d)
        flat = F.adaptive_avg_pool1d(flat, self.mlp_channels)
        return flat.reshape(n, h, w, self.mlp_channels).permute(0, 3, 1, 2)

    def pad_for_mlp(self, features: torch.Tensor) -> torch.Tensor:
        """Channel-reduce and zero-pad feature maps by ``window // 2`` for :func:`neighbourhood_inputs`."""
        radius = self.window // 2
        return F.pad(self.reduce_channels(features), (radius, radius, radius, radius))

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit_memory(self, features: torch.Tensor) -> torch.Tensor:
        """Build both coresets, the embedding->distribution map and the position histograms.

        Args:
            features: Training feature maps ``(N, D, h, w)``.

        Returns:
            ``(N, h, w)`` long: nearest distribution-coreset rank of every training patch (the MLP targets).
        """
        if features.ndim != 4 or features.shape[1] != self.feature_dim or features.shape[0] == 0:
            msg = f"fit_memory expects feature maps (N, {self.feature_dim}, h, w), got {tuple(features.shape)}."
            raise ValueError(msg)
        n_img, dim, height, width = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(-1, dim)
        n_emb = max(1, int(patches.shape[0] * self.coreset_ratio))
        order = greedy_coreset(patches, n_emb, projection_dim=self.projection_dim, seed=self.seed)
        embedding = patches[order.to(patches.device)].clone()
        n_dist = min(self.distribution_size, n_emb)
        distribution = embedding[:n_dist]  # prefix of the greedy order = greedy coreset of size n_dist
        _, emb_to_dist = nearest_neighbour(embedding, distribution)
        emb_to_dist[:n_dist] = torch.arange(n_dist, device=emb_to_dist.device)  # each entry is its own class
        _, targets = nearest_neighbour(patches, distribution)
        targets = targets.reshape(n_img, height, width)

        self.embedding_coreset = embedding
        self.emb_to_dist = emb_to_dist
        counts = torch.bincount(emb_to_dist, minlength=n_dist)
        self.class_members = torch.argsort(emb_to_dist, stable=True)
        self.class_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.position_hist = position_histogram(targets, n_dist, self.window)
        self.feature_size = torch.tensor([height, width], device=features.device)
        return targets

    def mlp_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """MLP logits restricted to the ``|C_dist|`` valid classes."""
        return self.mlp(inputs)[:, : self.n_dist]

    def mlp_loss(self, padded: torch.Tensor, targets: torch.Tensor, patch_index: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the MLP on training patches.

        Args:
            padded: Output of :meth:`pad_for_mlp` for the training feature maps.
            targets: ``(N, h, w)`` targets from :meth:`fit_memory`.
            patch_index: ``(B,)`` flat indices into ``targets``.
        """
        height, width = targets.shape[-2:]
        image_idx = patch_index // (height * width)
        row = (patch_index // width) % height
        col = patch_index % width
        inputs = neighbourhood_inputs(padded, image_idx, row, col, self.window)
        return F.cross_entropy(self.mlp_logits(inputs), targets.reshape(-1)[patch_index])

    # ------------------------------------------------------------------ scoring
    def neighbourhood_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``p(c_dist | N_p(x))`` with temperature ``T`` for every patch, ``(B * h * w, |C_dist|)``."""
        batch, _, height, width = features.shape
        padded = self.pad_for_mlp(features)
        grid_r, grid_c = torch.meshgrid(
            torch.arange(height, device=features.device), torch.arange(width, device=features.device), indexing="ij"
        )
        image_idx = torch.arange(batch, device=features.device).repeat_interleave(height * width)
        row = grid_r.reshape(-1).repeat(batch)
        col = grid_c.reshape(-1).repeat(batch)
        if is_exporting():  # static graph: one chunk (the patch count is symbolic)
            inputs = neighbourhood_inputs(padded, image_idx, row, col, self.window)
            return torch.softmax(self.mlp_logits(inputs) / self.temperature, dim=1)
        chunk = max(1, (1 << 23) // ((self.window**2 - 1) * self.mlp_channels))
        probs = [
            torch.softmax(
                self.mlp_logits(
                    neighbourhood_inputs(
                        padded, image_idx[s : s + chunk], row[s : s + chunk], col[s : s + chunk], self.window
                    )
                )
                / self.temperature,
                dim=1,
            )
            for s in range(0, image_idx.numel(), chunk)
        ]
        return torch.cat(probs)

    def masked_nearest(self, patches: torch.Tensor, allowed: torch.Tensor, search: str | None = None) -> torch.Tensor:
        """Eq. (4): distance of each patch to the nearest embedding entry whose distribution class is allowed.

        ``search="sparse"`` evaluates only the allowed (patch, entry) pairs: allowed classes are expanded to their
        embedding members through the CSR layout (``class_offsets`` / ``class_members``). ``search="dense"``
        computes one distance GEMM against the coreset, reduces it to the per-class minimum ``(P, |C_dist|)`` and
        masks that (shared by all masks); on CPU a GEMM beats gathering rows unless very few pairs are allowed
        (gathering costs ~100x a GEMM per pair), so ``"auto"`` (default) picks sparse when at most
        ``sparse_density`` of all pairs are allowed. Both give the same result. Patches without any allowed entry
        fall back to the plain nearest neighbour.

        Args:
            patches: ``(P, D)`` features.
            allowed: ``(P, |C_dist|)`` bool mask ``T_tau(p(c | .))``.
            search: ``"auto"``, ``"sparse"`` or ``"dense"``; the scorer's ``search`` when ``None``.

        Returns:
            ``(P,)`` distances.
        """
        return self.masked_nearest_many(patches, [allowed], search)[0]

    def masked_nearest_many(
        self, patches: torch.Tensor, masks: Sequence[torch.Tensor], search: str | None = None
    ) -> torch.Tensor:
        """:meth:`masked_nearest` for several masks at once (the dense ones share one distance GEMM).

        Args:
            patches: ``(P, D)`` features.
            masks: ``(P, |C_dist|)`` bool masks.
            search: See :meth:`masked_nearest`.

        Returns:
            ``(len(masks), P)`` distances.
        """
        search = self.search if search is None else search
        if search not in {"auto", "sparse", "dense"}:
            msg = f"search must be 'auto', 'sparse' or 'dense', got {search!r}."
            raise ValueError(msg)
        if is_exporting():
            return self._dense_masked_nearest(patches, masks)
        if patches.shape[0] > _NN_CHUNK:  # bound the (patch, class) index lists and distance blocks
            return torch.cat(
                [
                    self.masked_nearest_many(patches[s : s + _NN_CHUNK], [m[s : s + _NN_CHUNK] for m in masks], search)
                    for s in range(0, patches.shape[0], _NN_CHUNK)
                ],
                dim=1,
            )
        members = (self.class_offsets[1:] - self.class_offsets[:-1]).float()  # embedding entries per class
        total = max(1, patches.shape[0] * self.embedding_coreset.shape[0])
        class_min = None  # (P, |C_dist|) squared distance to the nearest member of each class
        results = []
        for allowed in masks:
            n_pairs = int((allowed.float() @ members).sum())
            self.last_density = n_pairs / total
            use_sparse = search == "sparse" or (search == "auto" and self.last_density <= self.sparse_density)
            if use_sparse:
                best = self._sparse_sq(patches, allowed, n_pairs)
            else:
                if class_min is None:
                    bank = self.embedding_coreset
                    dense_sq = (
                        patches.pow(2).sum(1, keepdim=True) - 2 * patches @ bank.T + bank.pow(2).sum(1)
                    ).clamp_min(0)
                    # Reduce to classes once: masking (P, |C_dist|) instead of (P, |C_emb|) for every mask.
                    class_min = dense_sq.new_full((patches.shape[0], self.n_dist), float("inf"))
                    index = self.emb_to_dist.expand(patches.shape[0], -1)
                    class_min.scatter_reduce_(1, index, dense_sq, reduce="amin")
                    del dense_sq
                best = class_min.masked_fill(~allowed, float("inf")).min(1).values
            best = best.sqrt()
            missing = torch.isinf(best)
            if missing.any():
                best[missing] = nearest_neighbour(patches[missing], self.embedding_coreset)[0]
            results.append(best)
        return torch.stack(results)

    def _dense_masked_nearest(self, patches: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Dense search without data-dependent control flow (export): same result as :meth:`masked_nearest_many`."""
        bank = self.embedding_coreset
        dense_sq = (patches.pow(2).sum(1, keepdim=True) - 2 * patches @ bank.T + bank.pow(2).sum(1)).clamp_min(0)
        plain = dense_sq.amin(1)
        results = []
        for allowed in masks:
            # An entry is allowed when its distribution class is: (P, |C_emb|) gather instead of a scatter-min.
            best = dense_sq.masked_fill(~allowed[:, self.emb_to_dist], float("inf")).amin(1)
            results.append(torch.where(torch.isinf(best), plain, best).sqrt())
        return torch.stack(results)

    def _sparse_sq(self, patches: torch.Tensor, allowed: torch.Tensor, n_pairs: int) -> torch.Tensor:
        best = torch.full((patches.shape[0],), float("inf"), device=patches.device)
        patch_id, class_rank = allowed.nonzero(as_tuple=True)
        members_per_item = self.class_offsets[class_rank + 1] - self.class_offsets[class_rank]
        item_end = members_per_item.cumsum(0)
        # Walk the expanded (patch, entry) list in chunks without materialising it: pair k belongs to the
        # (patch, class) item found by searchsorted on the cumulative member counts.
        for start in range(0, n_pairs, _PAIR_CHUNK):
            flat = torch.arange(start, min(start + _PAIR_CHUNK, n_pairs), device=patches.device)
            item = torch.searchsorted(item_end, flat, right=True)
            within = flat - (item_end[item] - members_per_item[item])
            entry = self.class_members[self.class_offsets[class_rank[item]] + within]
            query = patch_id[item]
            sq = (patches[query] - self.embedding_coreset[entry]).pow(2).sum(1)
            best.scatter_reduce_(0, query, sq, reduce="amin")
        return best

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Patch anomaly scores ``(B, 1, h, w)``: N/P-masked distances joined by ``combine`` (plain NN if neither)."""
        if not self.is_fitted:
            msg = "PniScorer is not fitted: train the model (Engine.fit) before predicting."
            raise RuntimeError(msg)
        batch, dim, height, width = features.shape
        if self.use_position and not is_exporting() and (height, width) != tuple(self.feature_size.tolist()):
            expected = self.feature_size.tolist()
            msg = (
                f"feature map {height}x{width} differs from the training feature map {expected[0]}x{expected[1]}: "
                "the position histograms need the training image size."
            )
            raise ValueError(msg)
        patches = features.permute(0, 2, 3, 1).reshape(-1, dim)
        probs = []
        if self.use_neighbourhood:
            probs.append(self.neighbourhood_probabilities(features))
        if self.use_position:
            probs.append(self.position_hist.repeat(batch, 1))
        if self.combine == "probability" and len(probs) == 2:
            probs = [(probs[0] + probs[1]) / 2]  # eq. (6)
        masks = [p > self.tau for p in probs]
        if not masks:
            scores = nearest_neighbour(patches, self.embedding_coreset)[0]
            self.last_density = 1.0  # every (patch, entry) pair compared
            return scores.reshape(batch, 1, height, width)
        scores = self.masked_nearest_many(patches, masks).mean(0).reshape(batch, 1, height, width)
        border = self.border
        if border and height > 2 * border and width > 2 * border:
            inner = scores[..., border : height - border, border : width - border]
            scores = F.pad(inner, (border, border, border, border), mode="replicate")
        return scores

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """Min-max normalise with the training score range (used by the ensemble and the refinement)."""
        low, high = self.score_range[0], self.score_range[1]
        return (scores - low) / (high - low).clamp_min(1e-12)


class PniModel(nn.Module):
    """PNI: ensemble of :class:`PniScorer` (one per backbone) plus the optional pixelwise refinement.

    Input images are in ``[0, 1]`` (the model applies the ImageNet normalisation itself, so the synthetic defect
    generators can work on the same tensors during training).

    Args:
        backbones: One or more timm backbones; several give the score-level ensemble (min-max per backbone with
            training statistics, then the average).
        refine: Use the refinement network.
        refine_weight: ``w`` in ``w * refined + (1 - w) * coarse``.
        refine_channels: Encoder widths of the refinement network.
        sigma: Gaussian smoothing of the upsampled coarse map.
        **scorer_kwargs: Arguments of :class:`PniScorer` shared by all backbones.
    """

    def __init__(
        self,
        backbones: Sequence[str] = ("resnet18",),
        refine: bool = True,
        refine_weight: float = 0.1,
        refine_channels: Sequence[int] = (16, 32, 64),
        sigma: float = 4.0,
        **scorer_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(backbones, str):
            backbones = [backbones]
        if not backbones:
            msg = "backbones must name at least one timm backbone."
            raise ValueError(msg)
        if not 0.0 <= refine_weight <= 1.0:
            msg = f"refine_weight must be in [0, 1], got {refine_weight}."
            raise ValueError(msg)
        self.scorers = nn.ModuleList(PniScorer(backbone=b, **scorer_kwargs) for b in backbones)
        self.refine = bool(refine)
        self.refine_weight = float(refine_weight)
        self.refiner = RefinementNet(refine_channels) if refine else None
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=sigma)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def is_fitted(self) -> bool:
        """Whether every scorer has its coresets."""
        return all(s.is_fitted for s in self.scorers)

    def normalise_image(self, image: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of ``[0, 1]`` images, with a clear error for a wrong shape."""
        if image.ndim != 4 or image.shape[1] != 3:
            msg = f"Pni expects RGB images of shape (B, 3, H, W) in [0, 1], got {tuple(image.shape)}."
            raise ValueError(msg)
        return (image - self.mean) / self.std

    def _backbone_maps(self, image: torch.Tensor, differentiable: bool = False) -> list[torch.Tensor]:
        """Per backbone, the patch scores min-max normalised with training statistics: list of ``(B, 1, h, w)``."""
        normalised = self.normalise_image(image)
        maps = []
        for scorer in self.scorers:
            with input_gradients(scorer.feature_extractor, differentiable):
                maps.append(scorer.normalise(scorer.patch_scores(scorer.extract(normalised))))
        return maps

    def feature_map(self, image: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """Anomaly map on the feature grid ``(B, h, w)``: the normalised patch scores averaged over backbones.

        This is the map a refiner differentiates (F2PAD's ``s(n)``); :meth:`coarse_map` upsamples and smooths the
        same per-backbone maps.

        Args:
            image: ``(B, 3, H, W)`` in ``[0, 1]``.
            differentiable: Let gradients flow from the map back to ``image`` (the backbones stay frozen).

        Returns:
            ``(B, h, w)`` map.
        """
        return torch.stack(self._backbone_maps(image, differentiable)).mean(0)[:, 0]

    def coarse_map(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised coarse anomaly map ``(B, 1, H, W)`` (upsampled, smoothed, averaged over backbones)."""
        # Upsampled per backbone, then averaged (not the upsampled feature_map): same values as before to the bit.
        maps = [self.anomaly_map_generator(m, image.shape[-2:]) for m in self._backbone_maps(image)]
        return torch.stack(maps).mean(0)

    def refine_map(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Refinement network output for images in ``[0, 1]`` and coarse maps (clamped to ``[0, 1]`` as input)."""
        if self.refiner is None:
            msg = "refine=False: the model has no refinement network."
            raise RuntimeError(msg)
        return self.refiner(self.normalise_image(image), coarse.clamp(0.0, 1.0))

    def forward(self, image: torch.Tensor) -> InferenceBatch:
        """Anomaly map and image score of ``[0, 1]`` images ``(B, 3, H, W)``."""
        coarse = self.coarse_map(image)
        anomaly_map = coarse
        if self.refiner is not None:
            refined = self.refine_map(image, coarse)
            anomaly_map = self.refine_weight * refined + (1.0 - self.refine_weight) * coarse
        # Image score = maximum of the final map, as in the paper (its ablation shows R changing the I-AUROC).
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(1), anomaly_map=anomaly_map)
