"""Training moved to its own package, `train/`: this alias keeps `python -m model.train` working.
(It imports nothing until run, so the model package never loads the training code.)"""

if __name__ == "__main__":
    from probe.job_signals import quiet_start

    with quiet_start(True):  # Ctrl-C while the command imports: one line, not a traceback
        from train.__main__ import cli

    cli()
