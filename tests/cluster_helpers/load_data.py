"""Run under torchrun by tests/test_cluster.py: every process loads CIFAR-10 from `data` (relative
to its node's working directory) the way `build_pipeline` does, inside `once_per_disk`, and says
how many training images it got. With sitecustomize.py beside it standing in for the download."""
import sys

from distributed.config import TrainConfig
from distributed.data import load_cifar10
from distributed.pipeline import build_accelerator, once_per_disk


def main() -> None:
    accelerator = build_accelerator(TrainConfig(mixed_precision="no"))
    with once_per_disk(accelerator):
        data = load_cifar10("data", download=True)
    accelerator.wait_for_everyone()
    # One write per line: the processes of a node share one pipe, and print() writes the text and
    # its newline separately, so two ranks' lines could run together.
    sys.stdout.write(f"rank {accelerator.process_index}: {len(data.train_y)} training images\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
