"""What the spark-submit jobs in ``jobs/`` run: training runs (``runs``), the straggler experiment
(``experiment``), their flag checks (``cli``) and plots (``plots``)."""
