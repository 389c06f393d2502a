"""Self-supervised pretext tasks: the same module trains a whole backbone or only target parameters."""

from tpp_components.pretext.decoder import PretextDecoderError, decoder_state_dict, load_decoder
from tpp_components.pretext.distill import DistillationHead
from tpp_components.pretext.encoders import encoder_feature_map, head_modules, vit_of
from tpp_components.pretext.mae import MaskedAutoencoder
from tpp_components.pretext.simmim import SimMIM
