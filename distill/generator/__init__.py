"""The text-to-image bundle: from-scratch VAE and UNet, latent classifier, fine-tuning, sampling."""
