"""The training command's error, defined where no torch is imported: `python -m train` parses its flags
(train/flags.py, which raises it) before it imports torch, so that `--help` answers at once."""


class TrainError(RuntimeError):
    """Bad input to training: the message is one line naming the problem."""
