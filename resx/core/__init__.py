"""What a run is made of: the configuration, the data, the models and the one training loop, and the
metric record they emit. Imports nothing else of resx: everything above builds on it."""
