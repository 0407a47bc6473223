"""The runner's own Hydra launcher plugins (found by Hydra's scan of `hydra_plugins`)."""
