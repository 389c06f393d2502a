"""Network builders and backbone weight loading."""

from tpp_components.networks.vit_classifier import ViTClassifier
from tpp_components.networks.tiny_vit import LITEMEDSAM_ENCODER, TinyViT
from tpp_components.networks.tiny_vit_classifier import TinyViTClassifier
from tpp_components.networks.tiny_vit_segmenter import TinyViTSegmenter
from tpp_components.networks.pretrained import LITEMEDSAM, PretrainedWeightsError, litemedsam_checkpoint
from tpp_components.networks.builders import INIT_CHOICES, build_network, trainable_parameters
from tpp_components.networks.weights import KEY_MAPS, WeightsError, load_backbone_weights, read_state_dict
