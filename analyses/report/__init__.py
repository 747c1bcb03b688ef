"""The findings report: one self-contained HTML file (plotly.js inlined once, works offline) with
every figure also printed as a table on stdout, all computed from a run and from ablations on the
run's checkpoint (data.py); nothing is hard-coded.

    python -m analyses.report                                  # the default run runs/model-val (recorded if missing)
    python -m analyses.report runs/x --out runs/x/report.html --max-tokens 20000 --seeds 3
    python -m analyses.report --findings analyses/FINDINGS.md  # also write the measured numbers as Markdown
    python -m analyses.report --compare runs/model-val-no-router-bias   # + the run-vs-run section

Sections: per-layer load balance; domain specialisation per layer (NMI, lift heatmaps); loss vs
fraction of the most-used experts masked (mode reroute: DeepSeekMoE's masking rule, on a fixed set
of experts rather than each token's own top ones, docs/metrics.md) against the same number of random
experts (several seeds); per-domain ablation (each domain's own top experts vs the
other domains'); consecutive-token repetition vs its random baselines; MTP agreement by domain;
speculative decoding with MTP drafts (acceptance rate and mean acceptance length, per domain and by
generated position, where `dsv3-probe spec --out RUN` added its tables to the run; the dashboard's MTP
page's figures through its functions, `analyses.metrics.speculative`); latent-KV effective rank by
layer; then the research sections: causal vs observed importance (each routed expert removed in turn,
`analyses.importance`), expert paths, domain probes (a linear probe of the domain from each layer's routing), token-id dependence, run vs run (with `--compare RUN`, a run
of the same model over the same windows; the run itself, or a copy, is refused) and steering (the most
specialised domain's experts forced on, `analyses.steer`). Every model section samples the run's own
windows (the corpus up to the cap the run was recorded with, its --max-tokens: only the domains the run
holds): the ablations evaluate at most --max-tokens of them, split evenly between the run's domains, and
are also written into the run's `ablations` table; importance and steering evaluate --importance-tokens
per domain, and write `expert_importance` and `steering`; the summary says how many tokens they scored
(each domain's) and what capped them (a domain the run holds fewer of is named), and warns when that is
under 100 (too few for their figures to mean anything).

Library: data.py (the numbers behind each section and the notebooks, from `analyses.metrics` and
the ablation API), research.py and research_model.py (the research sections; the latter runs the
model), spec.py (the speculative-decoding section), render.py (sections, figures, HTML and Markdown);
the command is `__main__.py`.
"""

from probe.job_signals import quiet_start

with quiet_start():  # `python -m analyses.report`: Ctrl-C while pandas is imported (its __main__ takes it from there)
    from .data import (FRACTIONS, RANK_BY, SEEDS, Sweep, ablation_sweep, balance, latent_rank, masked_counts,
                       mtp_by_domain, relative_loads, repetition, run_label, spec_decoding, specialisation)
    from .render import ReportError, check_run, compute, figures, print_text, summary, write_findings, write_html

__all__ = ["ablation_sweep", "balance", "latent_rank", "masked_counts", "mtp_by_domain", "relative_loads",
           "repetition", "run_label", "spec_decoding", "specialisation", "Sweep", "FRACTIONS", "SEEDS", "RANK_BY",
           "ReportError", "check_run", "compute", "figures", "print_text", "summary", "write_findings", "write_html"]
