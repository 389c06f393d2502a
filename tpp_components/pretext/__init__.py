"""Self-supervised pretext tasks: the same module trains a whole backbone or only target parameters."""

from tpp_components.pretext.decoder import PretextDecoderError, decoder_state_dict, load_decoder
from tpp_components.pretext.distill import DistillationHead
# head_modules is the configs' name for it (``$tpp_components.pretext.head_modules(@network_def)``)
from tpp_components.networks.anatomy import head_modules
from tpp_components.pretext.mae import MaskedAutoencoder
from tpp_components.pretext.simmim import SimMIM
