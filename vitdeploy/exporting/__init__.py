"""`vitdeploy export`: the exporter with its parity check (exporter.py), the graphs the variant table names
(graphs.py; the table is files/variants.py), the INT8 layer search (quant_search.py), the accuracy gate (gate.py)
and the precision ladder that builds, gates and writes each variant (ladder.py)."""
