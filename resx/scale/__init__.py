"""Many runs: depth x width x n sweeps on a local pool or Ray, and the experiments behind the paper's
figures with the command that writes them. Imports core, theory, runs and figures."""
