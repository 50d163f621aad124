"""Every formula of THEORY.md: descent margins, the jumpboard, the network's norms, the complexity
terms and the two guarantees' routes, the activation-gradient signals. Imports resx.core only."""
