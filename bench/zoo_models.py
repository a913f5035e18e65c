"""Which models the zoo sweep runs (``bench/zoo_sweep.py``).

torchvision: every classification model ``torchvision.models.list_models(module=torchvision.models)`` lists,
cheapest first (by the GFLOPs at 224x224 that torchvision's weight metadata records, read offline), so that a
time-boxed sweep covers the most models.

timm: one or two small members of each architecture family, chosen for the construct each brings that the
torchvision list lacks or has once (the comment says which). Small members, so each fits the per-model cap on
a 2-core machine; the construct, not the size, is what the sweep tests.
"""

from __future__ import annotations

TIMM_MODELS = [
    "resnet10t",               # plain residual, deep stem
    "resnet26d",               # avg-pool downsample shortcuts
    "seresnext26d_32x4d",      # squeeze-excitation + grouped convs
    "resnext26ts",             # grouped convs, SiLU
    "skresnet18",              # selective kernel (split, sum, attention over branches)
    "resnest14d",              # split attention (radix-grouped convs, reshape + softmax over splits)
    "res2net50_14w_8s",        # hierarchical channel split + concatenation
    "regnetx_002",             # RegNet X (grouped)
    "regnety_002",             # RegNet Y (grouped + SE)
    "efficientnet_b0",         # depthwise + SE + SiLU
    "tf_efficientnet_lite0",   # TF "same" padding, ReLU6
    "mobilenetv3_small_050",   # hard-swish, SE with hard-sigmoid
    "mobilenetv4_conv_small",  # universal inverted bottleneck
    "mnasnet_small",           # NAS mobile blocks
    "lcnet_050",               # PP-LCNet, 1x1 head conv after pooling
    "mixnet_s",                # mixed kernel sizes: channel split into several depthwise convs, concatenated
    "ghostnet_050",            # ghost modules: cheap depthwise features concatenated and sliced
    "rexnet_100",              # residual onto a slice of the channels only
    "dla34",                   # deep layer aggregation (concat of stages)
    "dpn48b",                  # dual path: residual + dense concatenation
    "hrnet_w18_small",         # parallel resolutions, fused by upsample + add
    "ese_vovnet19b_slim_dw",   # one-shot aggregation (concat) + effective SE
    "cspresnet50",             # cross-stage partial (split + concat)
    "selecsls42b",             # selective concatenation of block outputs
    "repvgg_a0",               # re-parameterisable multi-branch blocks
    "mobileone_s0",            # over-parameterised branches (train-time)
    "gernet_s",                # GPU-efficient mixed block types
    "nf_resnet26",             # normalisation-free, weight-standardised convs
    "convnext_atto",           # LayerNorm, channels-last Linear MLP, layer scale
    "edgenext_xx_small",       # conv + transposed attention hybrid
    "mobilevit_xxs",           # unfold into patches, transformer, fold back
    "efficientvit_b0",         # linear attention (MIT EfficientViT)
    "vit_tiny_patch16_224",    # pure transformer: patch embedding conv, then Linear only
]


def torchvision_classifiers() -> list[str]:
    """Every torchvision classifier name, by GFLOPs at 224x224 (torchvision's weight metadata), cheapest first."""
    import torchvision
    from torchvision.models import get_model_weights

    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(names, key=lambda n: (get_model_weights(n).DEFAULT.meta.get("_ops", 1e9), n))
