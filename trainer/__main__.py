"""``python -m qualitynet.trainer`` is ``iqa-train``; torchrun starts it as ``torchrun ... -m qualitynet.trainer``."""

from qualitynet.trainer.cli import train_command

if __name__ == "__main__":
    train_command()
