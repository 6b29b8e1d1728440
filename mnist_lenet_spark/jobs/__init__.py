"""What the command-line jobs (``jobs/``, the ``mnist-lenet-*`` commands) run: flags onto the one fit (``runs``,
``train_lenet``), prediction (``predict``), the straggler experiment (``experiment``), the flag checks (``cli``) and
the console entry points (``commands``)."""
