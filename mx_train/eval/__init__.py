"""Evaluation: ``mx eval`` runs and their reports, episode traces and their HTML pages, the
baselines table, and the benchmark report of ``mx bench``.

Modules: :mod:`~mx_train.eval.runner` (resumable K-sample evaluation), :mod:`~mx_train.eval.results`
(aggregation into results.json/.md), :mod:`~mx_train.eval.stats` (accuracy and its bootstrap
interval), :mod:`~mx_train.eval.design_structure` (single/reflection/ensemble/debate/other),
:mod:`~mx_train.eval.trace`, :mod:`~mx_train.eval.trace_build`, :mod:`~mx_train.eval.trace_html`,
:mod:`~mx_train.eval.pyhighlight`, :mod:`~mx_train.eval.baselines_table`,
:mod:`~mx_train.eval.bench_report`.
"""
