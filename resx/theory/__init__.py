"""Every formula of THEORY.md: descent margins, the jumpboard, the network's norms, the complexity
terms and the two guarantees' routes, the activation-gradient signals, and `diagnose` / `expand` for the user's own network (a torchvision
ResNet). Imports resx.core only."""
