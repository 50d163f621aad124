"""Pure functions from results to Plotly figures: a run's live panels (live), the paper's figures
(paper), grid cells and Figure 3 (cells), the depth-width allocation (allocation). Reads results,
never trains: imports only resx.core.records."""
