"""A run's life: the pipeline of named steps (train base -> estimate margins -> preview -> insert ->
fine-tune), its SQLite store and the job manager that runs it in the background. Imports resx.core
and resx.theory."""
