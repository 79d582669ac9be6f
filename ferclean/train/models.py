"""Backbones and the two-branch network (target branch + auxiliary AU-graph branch).

Inputs are (N, 1, H, W) float tensors (grayscale, normalised to [-1, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout2d(dropout),
    )


class CompactCNN(nn.Module):
    """Four double-conv blocks (w, 2w, 4w, 8w channels) + global average pooling.

    Sized for 48 px crops on 2 CPU cores; feature size `out_dim` = 8 * width.
    """

    def __init__(self, width: int = 32, in_channels: int = 1, dropout: float = 0.1):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers, cin = [], in_channels
        for c in chans:
            layers.append(_block(cin, c, dropout))
            cin = c
        self.features = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, out_dim, h, w) maps of the last block, before global pooling (EAC's class activation maps)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.feature_maps(x), 1).flatten(1)


def resnet18_backbone(input_size: int, in_channels: int = 1, pretrained: str | None = None) -> nn.Module:
    """torchvision ResNet-18 (weights=None) adapted to small crops; fc removed.

    Below 112 px the stem becomes a 3x3 stride-1 conv without max-pooling so 48 px faces keep
    spatial detail. `pretrained` is a path to a user's state dict (keys matching torchvision's
    resnet18; mismatching stem/fc keys are skipped). Nothing is ever downloaded.
    """
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if pretrained:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    if input_size < 112:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.out_dim = net.fc.in_features  # type: ignore[assignment]
    net.fc = nn.Identity()
    return net


def feature_maps(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) maps of `backbone` before its global average pooling; their spatial mean is
    `backbone(x)`. CompactCNN has `feature_maps`; a torchvision ResNet runs its stem and layers."""
    if hasattr(backbone, "feature_maps"):
        return backbone.feature_maps(x)
    b = backbone
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))  # type: ignore[operator]
    return b.layer4(b.layer3(b.layer2(b.layer1(x))))  # type: ignore[operator]


class GraphConv(nn.Module):
    """X' = LeakyReLU(A_bar X W) (eq. 6); A_bar is a fixed (M, M) row-normalised buffer."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.lin = nn.Linear(cin, cout, bias=False)

    def forward(self, x: torch.Tensor, a_bar: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(torch.matmul(a_bar, self.lin(x)), 0.2)


class FERNet(nn.Module):
    """Shared backbone -> target branch (classifier W, attention W_a) + AU-graph branch.

    forward(x) returns a dict: feat (N, D), logits (N, C), alpha (N,), and when the graph exists
    au_logits (N, M) and sem (N, M * G) (flattened GCN node outputs = semantic feature s_i); with
    maps=True also maps (N, D, h, w), the backbone's feature maps before pooling (feat = their mean).
    """

    def __init__(self, backbone: nn.Module, n_classes: int, a_bar: torch.Tensor | None,
                 au_dim: int = 16, gcn_channels: int = 64):
        super().__init__()
        self.backbone = backbone
        d = int(backbone.out_dim)  # type: ignore[arg-type]
        self.classifier = nn.Linear(d, n_classes)
        self.attention = nn.Linear(d, 1)
        self.n_aus = 0 if a_bar is None else int(a_bar.shape[0])
        if a_bar is not None:
            self.register_buffer("a_bar", a_bar.to(torch.float32))
            self.node_map = nn.Linear(d, self.n_aus * au_dim)
            self.au_dim = au_dim
            self.gcn1 = GraphConv(au_dim, gcn_channels)
            self.gcn2 = GraphConv(gcn_channels, gcn_channels)
            self.au_weight = nn.Parameter(torch.randn(self.n_aus, gcn_channels) * 0.05)
            self.au_bias = nn.Parameter(torch.zeros(self.n_aus))

    def aux_parameters(self) -> list[nn.Parameter]:
        if not self.n_aus:
            return []
        mods = [self.node_map, self.gcn1, self.gcn2]
        return [p for m in mods for p in m.parameters()] + [self.au_weight, self.au_bias]

    def forward(self, x: torch.Tensor, with_aux: bool = True, maps: bool = False) -> dict[str, torch.Tensor]:
        fmaps = feature_maps(self.backbone, x) if maps else None
        feat = self.backbone(x) if fmaps is None else fmaps.mean(dim=(2, 3))
        out = {
            "feat": feat,
            "logits": self.classifier(feat),
            "alpha": torch.sigmoid(self.attention(feat)).reshape(-1),
        }
        if self.n_aus and with_aux:
            nodes = self.node_map(feat).reshape(-1, self.n_aus, self.au_dim)
            h = self.gcn2(self.gcn1(nodes, self.a_bar), self.a_bar)  # (N, M, G)
            out["au_logits"] = (h * self.au_weight).sum(-1) + self.au_bias
            out["sem"] = h.flatten(1)
        if fmaps is not None:
            out["maps"] = fmaps
        return out

    def class_activation_maps(self, fmaps: torch.Tensor) -> torch.Tensor:
        """CAM_c = sum_k w_{c,k} F_k for every class c (no bias): (N, D, h, w) -> (N, C, h, w), float32."""
        return torch.einsum("ck,nkhw->nchw", self.classifier.weight.float(), fmaps.float())


def build_model(backbone: str, n_classes: int, a_bar: torch.Tensor | None, input_size: int,
                width: int = 32, au_dim: int = 16, gcn_channels: int = 64,
                pretrained: str | None = None) -> FERNet:
    """Assemble FERNet with backbone 'cnn' (CompactCNN) or 'resnet18'."""
    if backbone == "cnn":
        bb: nn.Module = CompactCNN(width=width)
    elif backbone == "resnet18":
        bb = resnet18_backbone(input_size, pretrained=pretrained)
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    return FERNet(bb, n_classes, a_bar, au_dim=au_dim, gcn_channels=gcn_channels)
