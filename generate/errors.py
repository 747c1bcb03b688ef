"""The generation error, defined where no torch is imported: `python -m generate` checks its flags with it
before it imports torch, so that `--help` and a flag's refusal answer at once."""


class GenerateError(ValueError):
    """Bad generation input (one line naming the problem)."""
