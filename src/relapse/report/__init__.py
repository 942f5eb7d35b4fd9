"""The report stage: one metrics table, the paper tables (Markdown, LaTeX, CSV) and figures.

measures.py      the named quantities and the seed-averaged wide frame
intervals.py     the 95% intervals of its seed means and of knowledge retained
selection.py     which hp of each method the tables show (config `report.selection`)
paper_tables.py  tables (a) main, (b) knowledge retained, (c) full grid, as data
markdown.py, latex.py   their renderings; captions.py: what every table states
figures.py       matplotlib figures; inputs.py: optional diagnostics / relearning tables
tables.py        the concat of every cell's metrics and the quick summary table
build.py         writes it all (the `relapse report` subcommand)
"""
