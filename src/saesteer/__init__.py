"""saesteer: steer language models through the features of sparse autoencoders."""
__version__ = "0.1.0"
