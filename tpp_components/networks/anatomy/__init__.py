"""Network anatomy: where each backbone kind keeps its head, feature map and mask-token hook (one file per kind)."""

from tpp_components.networks.anatomy.base import Anatomy, anatomy_of, head_modules, register
from tpp_components.networks.anatomy.swin_unetr import SwinUNETRAnatomy
from tpp_components.networks.anatomy.tiny_vit import TinyViTAnatomy
from tpp_components.networks.anatomy.vit import UNETRAnatomy, ViTAnatomy, vit_of, vit_patch_size, vit_tokens
