"""The whole cascade as a Snakemake workflow (``kits workflow``, ``kits demo``): Snakefile, rules, shipped
configurations, schema and profiles in this folder; docs/workflow.md."""
